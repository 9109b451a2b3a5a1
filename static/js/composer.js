// The composer: prompt box (Enter sends, Shift+Enter newline), character counter, panel form.
import { h } from "./dom.js";
import { fmtInt, splitModel } from "./format.js";
import { CostEstimate } from "./estimate.js";
import { PresetChooser } from "./preset_chooser.js";

/**
 * Members textarea → [{model, temperature?}] — the same format chat/forms/conversations.py reads.
 * `maxMembers` is the engine's MAX_PANEL_MEMBERS, read from the form's data-max-members.
 */
export function parseMembers(text, maxMembers) {
  const members = [];
  const lines = String(text || "").split(/\r?\n/);
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i].trim();
    if (!line || line.startsWith("#")) continue;
    const parts = line.split(/\s+/);
    if (parts.length > 2) {
      return { error: `Line ${i + 1}: write a model id, then optionally a temperature (e.g. “openai/gpt-5.1 0.7”).` };
    }
    const member = { model: parts[0] };
    if (parts.length === 2) {
      const t = Number(parts[1]);
      if (!Number.isFinite(t) || t < 0 || t > 2) return { error: `Line ${i + 1}: the temperature must be a number from 0 to 2.` };
      member.temperature = t;
    }
    members.push(member);
  }
  if (!members.length) return { error: "The panel needs at least one member." };
  if (members.length > maxMembers) return { error: `A panel has at most ${maxMembers} members (got ${members.length}).` };
  return { members };
}

export class Composer {
  /**
   * @param {HTMLFormElement} form
   * @param {{onSend?: (msg: {prompt, panel, follow_up_mode}) => boolean, onStop?: () => void}} hooks
   *   With onSend the form never posts a prompt itself (the conversation page sends over the
   *   websocket); without it (home page) the form posts to /c/new.
   */
  constructor(form, { onSend = null, onStop = null } = {}) {
    this.form = form;
    this.onSend = onSend;
    this.onStop = onStop;
    this.max = Number(form.dataset.max) || 20000;
    this.maxMembers = Number(form.dataset.maxMembers);
    this.textarea = form.querySelector("[data-prompt]");
    this.counter = form.querySelector("[data-counter]");
    this.sendButton = form.querySelector("[data-send]");
    this.stopButton = form.querySelector("[data-stop]");
    this.notices = form.querySelector("[data-notices]");
    this.summary = form.querySelector("[data-panel-summary]");
    this.settings = form.querySelector("[data-panel-settings]");
    this.saveStatus = form.querySelector("[data-save-status]");
    this.running = false;
    this.connected = true; // the conversation page says otherwise (setConnected)
    const estimate = form.querySelector("[data-estimate]");
    this.estimate = estimate ? new CostEstimate(form, estimate) : null;
    this.chooser = new PresetChooser(form, { onChange: () => this.#updateSummary() });

    this.textarea.addEventListener("input", () => this.update());
    this.textarea.addEventListener("keydown", (e) => this.#onKey(e));
    form.addEventListener("submit", (e) => this.#onSubmit(e));
    form.addEventListener("input", (e) => {
      if (e.target !== this.textarea) this.#updateSummary();
    });
    if (this.stopButton) this.stopButton.addEventListener("click", () => this.onStop && this.onStop());
    this.update();
    this.#updateSummary();
    if (!matchMedia("(hover: none)").matches) this.textarea.focus();
  }

  get prompt() {
    return this.textarea.value;
  }

  set prompt(value) {
    this.textarea.value = value;
    this.update();
  }

  focus() {
    this.textarea.focus();
  }

  update() {
    const el = this.textarea;
    el.style.height = "auto";
    el.style.height = `${Math.min(el.scrollHeight + 2, window.innerHeight * 0.4)}px`;
    const n = el.value.trim().length;
    this.counter.textContent = `${fmtInt(el.value.length)} / ${fmtInt(this.max)}`;
    const over = n > this.max;
    this.counter.classList.toggle("is-over", over);
    this.counter.title = over ? `The limit is ${fmtInt(this.max)} characters.` : "";
    this.sendButton.disabled = n === 0 || over || this.running;
    if (this.estimate) this.estimate.schedule();
  }

  /** The conversation page's socket is open (true) or not; the home page posts the form instead. */
  setConnected(connected) {
    this.connected = connected;
  }

  setRunning(running) {
    this.running = running;
    if (this.stopButton) this.stopButton.hidden = !running;
    this.sendButton.hidden = running;
    this.update();
  }

  /** The panel, follow-up mode and chosen preset id (or null), or the first problem with them. */
  readPanel() {
    const get = (name) => this.form.elements.namedItem(name);
    const chosen = this.chooser.current;
    if (chosen) {
      return {
        panel: chosen.panel,
        follow_up_mode: get("follow_up_mode") ? get("follow_up_mode").value : chosen.follow_up_mode || "fused",
        preset: this.chooser.value,
        name: chosen.name,
      };
    }
    const parsed = parseMembers(get("members") ? get("members").value : "", this.maxMembers);
    if (parsed.error) return { error: parsed.error };
    const analyst = (get("analyst") ? get("analyst").value : "").trim();
    const writer = (get("writer") ? get("writer").value : "").trim();
    if (!analyst) return { error: "Name an analyst model." };
    if (!writer) return { error: "Name a writer model." };
    return {
      panel: { members: parsed.members, analyst: { model: analyst }, writer: { model: writer } },
      follow_up_mode: get("follow_up_mode") ? get("follow_up_mode").value : "fused",
    };
  }

  /**
   * A dismissible notice above the prompt box. `tag` names what it is about ("connection",
   * "busy"), so the page can take it away once that is no longer true (clearNotices(tag)).
   */
  notice(message, kind = "error", { tag = null } = {}) {
    const close = h("button", { type: "button", class: "icon-btn", aria: { label: "Dismiss" } }, "×");
    const note = h(
      "div",
      { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status", data: tag ? { tag } : null },
      h("div", { class: "notice-text" }, h("p", {}, message)),
      close,
    );
    close.addEventListener("click", () => {
      note.remove();
      this.focus();
    });
    // One notice per message: repeating the same problem does not stack copies.
    for (const old of this.notices.querySelectorAll(".notice")) {
      if (old.textContent.startsWith(message)) old.remove();
    }
    this.notices.append(note);
    while (this.notices.childElementCount > 3) this.notices.firstElementChild.remove();
    return note;
  }

  /** Take every notice away, or only those of one tag. */
  clearNotices(tag = null) {
    if (tag === null) this.notices.replaceChildren();
    else for (const note of this.notices.querySelectorAll(`.notice[data-tag="${tag}"]`)) note.remove();
  }

  #updateSummary() {
    if (this.estimate) this.estimate.schedule();
    if (!this.summary) return;
    const result = this.readPanel();
    if (result.error) {
      this.summary.textContent = result.error;
      return;
    }
    const { panel } = result;
    const n = panel.members.length;
    const names = panel.members.map((m) => m.label || splitModel(m.model).name);
    this.summary.textContent = `${result.name ? `${result.name}: ` : ""}${n} model${n === 1 ? "" : "s"} (${names.join(", ")}) · analyst: ${splitModel(panel.analyst.model).name} · writer: ${splitModel(panel.writer.model).name}`;
  }

  #onKey(e) {
    if (e.key !== "Enter" || e.shiftKey || e.isComposing || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    if (!this.sendButton.disabled) this.form.requestSubmit(this.sendButton);
    else if (this.running && !this.connected && this.textarea.value.trim()) {
      this.notice("Not connected to the server, so nothing was sent. Your prompt is still here: send it once the connection is back.", "warn", { tag: "connection" });
    } else if (this.running) this.notice("A run is going in this conversation. Stop it (Esc) or wait for it to finish.", "warn", { tag: "busy" });
  }

  #onSubmit(e) {
    const submitter = e.submitter;
    if (submitter && submitter.hasAttribute("data-save-panel")) {
      e.preventDefault();
      this.#savePanel(submitter);
      return;
    }
    const prompt = this.textarea.value.trim();
    if (!prompt) {
      e.preventDefault();
      this.focus();
      return;
    }
    if (prompt.length > this.max) {
      e.preventDefault();
      this.notice(`The prompt is ${fmtInt(prompt.length)} characters; the limit is ${fmtInt(this.max)}.`);
      return;
    }
    const panel = this.readPanel();
    if (panel.error) {
      e.preventDefault();
      if (this.settings) this.settings.open = true;
      this.notice(panel.error);
      return;
    }
    if (!this.onSend) {
      // Home page: the browser posts the form; keep a double Enter from posting twice.
      this.sendButton.disabled = true;
      return;
    }
    e.preventDefault();
    if (this.onSend({ prompt, panel: panel.panel, follow_up_mode: panel.follow_up_mode, preset: panel.preset || null })) {
      this.textarea.value = "";
      this.update();
      if (this.settings) this.settings.open = false;
    }
  }

  async #savePanel(button) {
    const panel = this.readPanel();
    if (panel.error) {
      this.#saved(panel.error, true);
      return;
    }
    button.disabled = true;
    this.#saved("Saving…", false);
    try {
      const body = new FormData(this.form);
      body.delete("prompt");
      const response = await fetch(button.formAction, {
        method: "POST",
        body,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => ({}));
      if (response.ok && data.ok) {
        this.#saved("Saved. New turns in this conversation start with this panel.", false);
        this.chooser.saved(this.chooser.value ? "Saved for this conversation." : "");
      } else {
        this.#saved(data.error || `Could not save (HTTP ${response.status}).`, true);
        this.chooser.failed(data.error || `Could not save (HTTP ${response.status}).`);
      }
    } catch {
      this.#saved("Could not reach the server.", true);
      this.chooser.failed("Could not reach the server.");
    } finally {
      button.disabled = false;
    }
  }

  #saved(text, isError) {
    if (!this.saveStatus) return;
    this.saveStatus.textContent = text;
    this.saveStatus.classList.toggle("is-error", isError);
  }
}
