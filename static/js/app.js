// Every signed-in page: the collapsible sidebar, conversation search (titles at once, then text), dismissible messages.

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

const SEARCH_DEBOUNCE_MS = 200;

function initSearch() {
  // Titles filter at once; prompts and fused answers are searched on the server (the home
  // view's JSON answer), and its matches are shown too when it answers.
  const input = document.querySelector("[data-conv-search]");
  if (!input) return;
  const url = input.form && input.form.dataset.searchUrl;
  const items = [...document.querySelectorAll("[data-conv-item]")];
  const groups = [...document.querySelectorAll("[data-conv-group]")];
  const none = document.querySelector("[data-conv-nomatch]");
  const show = (matches) => {
    let shown = 0;
    for (const item of items) {
      item.hidden = !matches(item);
      if (!item.hidden) shown += 1;
    }
    for (const group of groups) group.hidden = !group.querySelector("[data-conv-item]:not([hidden])");
    if (none) none.hidden = shown > 0 || items.length === 0;
  };
  let timer = null;
  let asked = 0; // only the answer to the latest input is shown
  input.addEventListener("input", () => {
    const q = input.value.trim();
    const inTitle = (item) => !q || item.dataset.title.includes(q.toLowerCase());
    show(inTitle);
    clearTimeout(timer);
    const ask = ++asked;
    if (!q || !url) return;
    timer = setTimeout(async () => {
      try {
        const response = await fetch(`${url}?q=${encodeURIComponent(q)}`, { headers: { Accept: "application/json" } });
        if (!response.ok || ask !== asked) return;
        const ids = new Set((await response.json()).ids.map(String));
        if (ask === asked) show((item) => inTitle(item) || ids.has(item.dataset.convId));
      } catch {
        // Offline or signed out: the title filter stays, Enter still searches through the page.
      }
    }, SEARCH_DEBOUNCE_MS);
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
