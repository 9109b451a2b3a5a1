// Accept or reject a fused answer, with an optional note (chat/feedback.py, saved by
// conversation.js through POST /c/<id>/runs/<run>/feedback).
//
// What was saved comes with the run's state (`feedback: {accepted, note} | null`); the note being
// typed lives here, so a redraw of the turn keeps it. The note is the user's text: it goes in
// through `value` and `textContent` only.
import { h, icon } from "./dom.js";
import { RUN } from "./state.js";

const ICON_ACCEPT = "M4.5 10.5l3.5 3.5 7.5-8";
const ICON_REJECT = "M5.5 5.5l9 9M14.5 5.5l-9 9";

/** A finished run with a fused answer: the only kind the server lets a user judge. */
export function canJudge(run) {
  return Boolean(run.run) && run.status === RUN.COMPLETE && Boolean((run.final.content || "").trim());
}

let counter = 0;

export class FeedbackControls {
  /** `save(run, {accepted, note})` → Promise<{ok, status, data}>: the server's answer. */
  constructor(save) {
    this.save = save;
    this.run = null;
    this.draft = null; // the note as typed and not saved yet; null: show the saved one
    this.error = null; // {field, message} of the last refused save
    this.status = "";
    this.busy = false;
    const id = `feedback-note-${++counter}`;
    this.errorId = `${id}-error`;

    this.acceptBtn = h("button", { type: "button", class: "btn btn-small feedback-btn is-accept", aria: { pressed: "false" } }, icon(ICON_ACCEPT), "Accept");
    this.rejectBtn = h("button", { type: "button", class: "btn btn-small feedback-btn is-reject", aria: { pressed: "false" } }, icon(ICON_REJECT), "Reject");
    this.statusEl = h("span", { class: "feedback-status", role: "status" });
    this.choiceError = h("p", { class: "feedback-error", role: "alert", hidden: true });
    this.noteInput = h("textarea", { id, class: "feedback-note-input", rows: "2", placeholder: "What made it right or wrong? (optional)" });
    this.saveBtn = h("button", { type: "button", class: "btn btn-small" }, "Save");
    this.noteError = h("p", { class: "feedback-error", id: this.errorId, role: "alert", hidden: true });
    this.noteEl = h(
      "div",
      { class: "feedback-note", hidden: true },
      h("label", { for: id }, "Note"),
      h("div", { class: "feedback-note-row" }, this.noteInput, this.saveBtn),
      this.noteError,
    );
    this.root = h(
      "div",
      { class: "feedback", role: "group", aria: { label: "Your verdict on the fused answer" }, hidden: true, data: { feedback: "" } },
      h("div", { class: "feedback-choice" }, h("span", { class: "feedback-question" }, "Keep this answer?"), this.acceptBtn, this.rejectBtn, this.statusEl),
      this.choiceError,
      this.noteEl,
    );

    this.acceptBtn.addEventListener("click", () => this.#choose(true));
    this.rejectBtn.addEventListener("click", () => this.#choose(false));
    this.saveBtn.addEventListener("click", () => this.#saveNote());
    this.noteInput.addEventListener("input", () => {
      this.draft = this.noteInput.value;
      if (this.status) this.#setStatus("");
      if (this.error && this.error.field === "note") {
        this.error = null; // typing is fixing it
        this.#drawErrors();
      }
    });
    this.noteInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.#saveNote();
      }
    });
  }

  /** Draw the controls for *run* (the version shown). */
  update(run) {
    if (!this.run || this.run.run !== run.run) {
      this.draft = null;
      this.error = null;
      this.status = "";
    }
    this.run = run;
    this.root.hidden = !canJudge(run);
    if (this.root.hidden) return;
    const saved = run.feedback || null;
    const accepted = saved ? saved.accepted : null;
    for (const [button, value, verb] of [[this.acceptBtn, true, "Accepted"], [this.rejectBtn, false, "Rejected"]]) {
      const pressed = accepted === value;
      button.setAttribute("aria-pressed", String(pressed));
      button.title = pressed ? `${verb}: press again to take it back` : `${verb.slice(0, -2)} this answer`;
      button.disabled = this.busy;
    }
    this.saveBtn.disabled = this.busy;
    // The note appears once the user has chosen.
    this.noteEl.hidden = !saved;
    const text = this.draft ?? (saved ? saved.note : "");
    if (this.noteInput.value !== text) this.noteInput.value = text;
    this.#setStatus(this.status);
    this.#drawErrors();
  }

  #setStatus(text) {
    this.status = text;
    this.statusEl.textContent = text;
  }

  #drawErrors() {
    const error = this.error;
    const onNote = Boolean(error && error.field === "note" && !this.noteEl.hidden);
    this.noteError.textContent = onNote ? error.message : "";
    this.noteError.hidden = !onNote;
    this.noteInput.setAttribute("aria-invalid", String(onNote));
    if (onNote) this.noteInput.setAttribute("aria-describedby", this.errorId);
    else this.noteInput.removeAttribute("aria-describedby");
    this.choiceError.textContent = error && !onNote ? error.message : "";
    this.choiceError.hidden = !(error && !onNote);
  }

  #choose(value) {
    const current = this.run.feedback ? this.run.feedback.accepted : null;
    // Pressing the pressed button takes the verdict back; the note typed stays here, unsaved.
    if (current === value) {
      this.draft = this.noteInput.value;
      this.#send({ accepted: null, note: "" }, "Taken back.");
      return;
    }
    this.#send({ accepted: value, note: this.draft ?? (this.run.feedback ? this.run.feedback.note : "") }, value ? "Accepted." : "Rejected.");
  }

  #saveNote() {
    const accepted = this.run.feedback ? this.run.feedback.accepted : null;
    if (accepted === null) return; // the field shows only after choosing
    this.#send({ accepted, note: this.noteInput.value }, "Note saved.");
  }

  async #send(body, done) {
    const run = this.run;
    this.busy = true;
    this.error = null;
    this.status = "Saving…";
    this.update(run);
    let result;
    try {
      result = await this.save(run, body);
    } catch {
      result = { ok: false, status: 0, data: { error: "Could not reach the server. Try again." } };
    }
    this.busy = false;
    const data = result.data || {};
    const ok = result.ok && Object.prototype.hasOwnProperty.call(data, "accepted");
    if (ok) {
      const saved = data.accepted === null ? null : { accepted: Boolean(data.accepted), note: String(data.note || "") };
      // The turn may have been redrawn from a newer copy of the same run meanwhile: update both.
      for (const r of new Set([run, this.run])) if (r.run === run.run) r.feedback = saved;
      if (body.accepted !== null) this.draft = null; // what is saved is what is shown
      this.status = done;
    } else {
      const message =
        data.error ||
        (result.status === 403
          ? "The page's session has expired: reload the page, then try again."
          : result.ok
            ? "You seem to be signed out: reload the page, then try again."
            : `Could not save (HTTP ${result.status}). Try again.`);
      this.error = { field: data.field || null, message };
      this.status = "";
    }
    if (this.run.run !== run.run) {
      // The reader switched to another version meanwhile: what happened is not about this one.
      this.error = null;
      this.status = "";
    }
    this.update(this.run);
    if (this.error && this.error.field === "note") this.noteInput.focus();
  }
}
