// Preset pages: add and remove member rows in the editor (a Django formset), and copy the share
// link. Rows are renumbered after every change so the formset's indices stay 0…n-1.

const PREFIX = "members";
const INDEXED = new RegExp(`^${PREFIX}-(\\d+|__prefix__)-`);

function initEditor(form) {
  const rows = form.querySelector("[data-member-rows]");
  const template = form.querySelector("[data-member-template]");
  const addButton = form.querySelector("[data-add-member]");
  const total = form.querySelector(`input[name="${PREFIX}-TOTAL_FORMS"]`);
  const count = form.querySelector("[data-member-count]");
  const max = Number(form.dataset.maxMembers); // the engine's MAX_PANEL_MEMBERS
  if (!rows || !template || !addButton || !total) return;

  const renumber = () => {
    const all = [...rows.querySelectorAll("[data-member-row]")];
    all.forEach((row, i) => {
      for (const el of row.querySelectorAll("[name], [id], label[for]")) {
        for (const attr of ["name", "id", "for"]) {
          const value = el.getAttribute(attr);
          if (value && INDEXED.test(value)) el.setAttribute(attr, value.replace(INDEXED, `${PREFIX}-${i}-`));
          else if (value && value.startsWith(`id_${PREFIX}-`)) el.setAttribute(attr, `id_${value.slice(3).replace(INDEXED, `${PREFIX}-${i}-`)}`);
        }
      }
      row.querySelector("[data-member-number]").textContent = String(i + 1);
      const remove = row.querySelector("[data-remove-member]");
      remove.setAttribute("aria-label", `Remove member ${i + 1}`);
      remove.disabled = all.length <= 1;
    });
    total.value = String(all.length);
    if (count) count.textContent = String(all.length);
    addButton.disabled = all.length >= max;
    addButton.title = all.length >= max ? `A panel has at most ${max} members.` : "";
  };

  addButton.addEventListener("click", () => {
    if (rows.querySelectorAll("[data-member-row]").length >= max) return;
    const row = template.content.firstElementChild.cloneNode(true);
    rows.append(row);
    renumber();
    row.querySelector("input").focus();
  });

  rows.addEventListener("click", (e) => {
    const button = e.target.closest("[data-remove-member]");
    if (!button || button.disabled) return;
    const row = button.closest("[data-member-row]");
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    renumber();
    if (next) next.querySelector("input").focus();
  });

  renumber();
}

function initCopyButtons() {
  for (const button of document.querySelectorAll("[data-copy-target]")) {
    const input = document.getElementById(button.dataset.copyTarget);
    if (!input) continue;
    button.addEventListener("click", async () => {
      input.select();
      try {
        await navigator.clipboard.writeText(input.value);
        button.textContent = "Copied";
      } catch {
        button.textContent = "Press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy link"; }, 2000);
    });
  }
  for (const input of document.querySelectorAll("[data-select-on-focus]")) {
    input.addEventListener("focus", () => input.select());
  }
}

const editor = document.querySelector("[data-preset-editor]");
if (editor) initEditor(editor);
initCopyButtons();
