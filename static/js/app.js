// Every signed-in page: the collapsible sidebar, instant title filtering, dismissible messages.

function initSidebar() {
  const app = document.querySelector(".app");
  const toggle = document.querySelector("[data-sidebar-toggle]");
  if (!app || !toggle) return;
  const sidebar = document.getElementById("sidebar");
  const setOpen = (open) => {
    app.classList.toggle("sidebar-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    for (const scrim of document.querySelectorAll(".sidebar-scrim")) scrim.hidden = !open;
    if (open) (sidebar.querySelector("[data-conv-search]") || sidebar).focus();
    else toggle.focus({ preventScroll: true });
  };
  toggle.addEventListener("click", () => setOpen(!app.classList.contains("sidebar-open")));
  for (const el of document.querySelectorAll("[data-sidebar-close]")) el.addEventListener("click", () => setOpen(false));
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && app.classList.contains("sidebar-open")) {
      e.preventDefault();
      e.stopImmediatePropagation();
      setOpen(false);
    }
  }, true);
}

function initSearch() {
  const input = document.querySelector("[data-conv-search]");
  if (!input) return;
  const items = [...document.querySelectorAll("[data-conv-item]")];
  const groups = [...document.querySelectorAll("[data-conv-group]")];
  const none = document.querySelector("[data-conv-nomatch]");
  input.addEventListener("input", () => {
    const q = input.value.trim().toLowerCase();
    let shown = 0;
    for (const item of items) {
      const match = !q || item.dataset.title.includes(q);
      item.hidden = !match;
      if (match) shown += 1;
    }
    for (const group of groups) group.hidden = !group.querySelector("[data-conv-item]:not([hidden])");
    if (none) none.hidden = shown > 0 || items.length === 0;
  });
}

function initMenus() {
  // One open menu at a time; a click elsewhere or Escape closes it.
  document.addEventListener("click", (e) => {
    for (const d of document.querySelectorAll("details.conv-menu[open], details.menu[open]")) {
      if (!d.contains(e.target)) d.open = false;
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    const open = document.querySelector("details.conv-menu[open], details.menu[open]");
    if (open) {
      e.preventDefault();
      e.stopImmediatePropagation();
      open.open = false;
      open.querySelector("summary").focus();
    }
  }, true);
  for (const d of document.querySelectorAll("details.conv-menu")) {
    d.addEventListener("toggle", () => {
      if (d.open) {
        const input = d.querySelector("input[name=title]");
        if (input) {
          input.focus();
          input.select();
        }
      }
    });
  }
}

function initFlash() {
  for (const button of document.querySelectorAll("[data-dismiss]")) {
    button.addEventListener("click", () => button.closest(".flash").remove());
  }
}

initSidebar();
initSearch();
initMenus();
initFlash();
