// The model picker: autocomplete from the model catalogue (/models.json?q=) on any input or
// textarea that carries `data-model-picker` (its value may name another JSON URL). In a textarea
// of one model per line it completes the model id of the line the caret is on and keeps the rest
// of the line (a temperature). Each suggestion shows the price per million tokens in and out,
// the context length, and whether the model can call tools.
//
// Suggestions appear as the user types (or on ↓). Fields are picked up on first focus, so rows a
// page adds later work too.
import { h } from "./dom.js";
import { fmtInt } from "./format.js";

const DEFAULT_URL = "/models.json";
const DEBOUNCE_MS = 120;
const cache = new Map(); // url+query → models
let counter = 0;

function money(perMillion) {
  if (perMillion === null || perMillion === undefined) return "?";
  if (perMillion === 0) return "free";
  return `$${perMillion < 0.1 ? perMillion.toFixed(3) : perMillion.toFixed(2)}`;
}

function contextText(tokens) {
  if (!tokens) return null;
  if (tokens >= 1_000_000) return `${+(tokens / 1_000_000).toFixed(1)}M context`;
  if (tokens >= 1000) return `${Math.round(tokens / 1000)}K context`;
  return `${fmtInt(tokens)} context`;
}

/** What the picker completes in *field*: the whole value, or the current line's first word. */
function tokenAt(field) {
  const value = field.value;
  if (field.tagName !== "TEXTAREA") return { start: 0, end: value.length, text: value.trim() };
  const caret = field.selectionStart ?? value.length;
  const lineStart = value.lastIndexOf("\n", caret - 1) + 1;
  const lineEnd = value.indexOf("\n", caret) === -1 ? value.length : value.indexOf("\n", caret);
  const line = value.slice(lineStart, lineEnd);
  const lead = line.length - line.trimStart().length;
  const word = line.slice(lead).split(/\s/)[0];
  return { start: lineStart + lead, end: lineStart + lead + word.length, text: word };
}

class ModelPicker {
  constructor(field) {
    this.field = field;
    this.url = field.dataset.modelPicker || DEFAULT_URL;
    this.models = [];
    this.active = -1;
    this.timer = null;
    this.abort = null;
    this.id = `model-picker-${(counter += 1)}`;
    this.list = h("ul", { class: "mp-list", id: this.id, role: "listbox", aria: { label: "Models" }, hidden: true });
    document.body.append(this.list);
    field.setAttribute("aria-autocomplete", "list");
    field.setAttribute("aria-controls", this.id);
    field.setAttribute("aria-expanded", "false");

    field.addEventListener("input", () => this.onInput());
    field.addEventListener("keydown", (e) => this.onKey(e));
    field.addEventListener("blur", () => setTimeout(() => this.close(), 120));
    this.list.addEventListener("mousedown", (e) => e.preventDefault()); // keep the focus in the field
    this.list.addEventListener("click", (e) => {
      const option = e.target.closest("[role=option]");
      if (option) this.choose(Number(option.dataset.index));
    });
    window.addEventListener("resize", () => this.place());
    document.addEventListener("scroll", () => this.place(), true);
  }

  get open() {
    return !this.list.hidden;
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.search(), DEBOUNCE_MS);
  }

  /** Narrow what is shown at once (so Enter never picks a suggestion for older text), then ask. */
  onInput() {
    const q = tokenAt(this.field).text.toLowerCase();
    if (!q) {
      this.close(); // an empty line is not a request for the whole catalogue; ↓ asks for it
      clearTimeout(this.timer);
      return;
    }
    if (this.open) {
      const words = q.split(/\s+/);
      const narrowed = this.models.filter((m) => words.every((w) => `${m.id} ${m.name}`.toLowerCase().includes(w)));
      if (narrowed.length) this.render(narrowed);
      else this.close();
    }
    this.schedule();
  }

  async search() {
    if (document.activeElement !== this.field) return;
    const q = tokenAt(this.field).text;
    const key = `${this.url}\n${q}`;
    let models = cache.get(key);
    if (!models) {
      if (this.abort) this.abort.abort();
      this.abort = new AbortController();
      try {
        const response = await fetch(`${this.url}?q=${encodeURIComponent(q)}`, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
          signal: this.abort.signal,
        });
        if (!response.ok) return;
        models = (await response.json()).models || [];
      } catch {
        return; // aborted by a newer keystroke, or offline: the field still works as plain text
      }
      cache.set(key, models);
    }
    if (document.activeElement !== this.field) return;
    // Nothing to suggest, or exactly what is written already: stay out of the way.
    if (!models.length || (models.length === 1 && models[0].id === q)) {
      this.close();
      return;
    }
    this.render(models);
  }

  render(models) {
    this.models = models;
    this.active = -1;
    this.list.replaceChildren(
      ...models.map((m, i) => {
        const facts = [`${money(m.prompt_per_m)} in · ${money(m.completion_per_m)} out per 1M`, contextText(m.context_length),
          m.tools ? "tools" : null].filter(Boolean);
        return h(
          "li",
          { class: "mp-option", id: `${this.id}-${i}`, role: "option", aria: { selected: "false" }, data: { index: i } },
          h("span", { class: "mp-line" }, h("span", { class: "mp-name" }, m.name || m.id), h("code", { class: "mp-id" }, m.id)),
          h("span", { class: "mp-facts" }, facts.join(" · ")),
        );
      }),
    );
    this.list.hidden = false;
    this.field.setAttribute("aria-expanded", "true");
    this.place();
  }

  /** Below the field, or above it when there is more room there (the composer sits at the bottom). */
  place() {
    if (!this.open) return;
    const rect = this.field.getBoundingClientRect();
    const below = window.innerHeight - rect.bottom;
    const above = rect.top;
    const style = this.list.style;
    style.left = `${Math.max(8, rect.left)}px`;
    style.width = `${Math.max(rect.width, 320)}px`;
    if (below >= 240 || below >= above) {
      style.top = `${rect.bottom + 4}px`;
      style.bottom = "auto";
      style.maxHeight = `${Math.max(120, below - 16)}px`;
    } else {
      style.top = "auto";
      style.bottom = `${window.innerHeight - rect.top + 4}px`;
      style.maxHeight = `${Math.max(120, above - 16)}px`;
    }
  }

  close() {
    if (!this.open) return;
    this.list.hidden = true;
    this.active = -1;
    this.field.setAttribute("aria-expanded", "false");
    this.field.removeAttribute("aria-activedescendant");
  }

  highlight(index) {
    const options = this.list.querySelectorAll("[role=option]");
    if (!options.length) return;
    this.active = (index + options.length) % options.length;
    options.forEach((o, i) => o.setAttribute("aria-selected", String(i === this.active)));
    const option = options[this.active];
    this.field.setAttribute("aria-activedescendant", option.id);
    option.scrollIntoView({ block: "nearest" });
  }

  choose(index) {
    const model = this.models[index];
    if (!model) return;
    const { start, end } = tokenAt(this.field);
    const value = this.field.value;
    this.field.value = value.slice(0, start) + model.id + value.slice(end);
    const caret = start + model.id.length;
    if (this.field.tagName === "TEXTAREA") this.field.setSelectionRange(caret, caret);
    this.close();
    // Let the page react as if the user had typed it (the composer's summary and estimate).
    this.field.dispatchEvent(new Event("input", { bubbles: true }));
    clearTimeout(this.timer);
  }

  onKey(e) {
    if (!this.open) {
      if (e.key === "ArrowDown" && (e.altKey || this.field.tagName !== "TEXTAREA")) {
        e.preventDefault();
        this.search();
      }
      return;
    }
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      this.highlight(this.active + (e.key === "ArrowDown" ? 1 : -1));
    } else if ((e.key === "Enter" || e.key === "Tab") && this.active >= 0) {
      e.preventDefault();
      this.choose(this.active);
    } else if (e.key === "Escape") {
      e.preventDefault(); // an open list closes first; Escape does not also stop a run
      e.stopPropagation();
      this.close();
    }
  }
}

const pickers = new WeakMap();

function attach(field) {
  if (!pickers.has(field)) pickers.set(field, new ModelPicker(field));
  return pickers.get(field);
}

document.addEventListener("focusin", (e) => {
  const field = e.target.closest && e.target.closest("input[data-model-picker], textarea[data-model-picker]");
  if (field) attach(field);
});
