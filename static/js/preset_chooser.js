// The composer's preset chooser: picking a preset fills the panel fields from it (for a look and
// a tweak); editing those fields turns the choice into "Custom panel". The composer sends the
// chosen preset's id with `start`, so the server runs the preset's full config (labels, system
// prompts, research settings) — the fields only show models and temperatures.
import { readJSON } from "./dom.js";

const PANEL_FIELDS = new Set(["members", "analyst", "writer"]);

export class PresetChooser {
  /** @param {HTMLFormElement} form @param {{onChange?: () => void}} hooks */
  constructor(form, { onChange = null } = {}) {
    this.form = form;
    this.onChange = onChange;
    this.select = form.querySelector("[data-preset-select]");
    this.useButton = form.querySelector("[data-preset-use]");
    this.status = form.querySelector("[data-preset-status]");
    this.panels = readJSON("preset-panels") || {};
    this.savedValue = this.select ? this.select.dataset.saved || "" : "";
    if (!this.select) return;

    this.select.addEventListener("change", () => {
      if (this.current) this.#fill(this.current);
      this.#say("");
      this.#sync();
    });
    // Registered before the composer's own listener, so its summary sees the new choice.
    form.addEventListener("input", (e) => {
      if (this.select.value && PANEL_FIELDS.has(e.target.name)) {
        this.select.value = "";
        this.#sync();
      }
    });
    // On load only fill the fields: the composer reads the choice once it is constructed.
    if (this.current) this.#fill(this.current);
    if (this.useButton) this.useButton.hidden = true;
  }

  /** The chosen preset's id ("" for a custom panel). */
  get value() {
    return this.select ? this.select.value : "";
  }

  /** {name, panel, follow_up_mode} of the chosen preset, or null. */
  get current() {
    return (this.value && this.panels[this.value]) || null;
  }

  /** The conversation now runs the chosen preset (after "use for this conversation"). */
  saved(message) {
    this.savedValue = this.value;
    this.#sync();
    this.#say(message);
  }

  failed(message) {
    this.#say(message, true);
  }

  #fill({ panel, follow_up_mode: mode }) {
    const set = (name, value) => {
      const el = this.form.elements.namedItem(name);
      if (el) el.value = value;
    };
    set("members", panel.members.map((m) => (m.temperature != null ? `${m.model} ${m.temperature}` : m.model)).join("\n"));
    set("analyst", panel.analyst ? panel.analyst.model : "");
    set("writer", panel.writer ? panel.writer.model : "");
    if (mode) set("follow_up_mode", mode);
  }

  #sync() {
    if (this.useButton) this.useButton.hidden = !this.value || this.value === this.savedValue;
    if (this.onChange) this.onChange();
  }

  #say(text, isError = false) {
    if (!this.status) return;
    clearTimeout(this.sayTimer);
    this.status.textContent = text || "";
    this.status.classList.toggle("is-error", isError);
    // A confirmation fades after a moment; an error stays until the next choice.
    if (text && !isError) this.sayTimer = setTimeout(() => { this.status.textContent = ""; }, 4000);
  }
}
