// The composer's cost estimate: what the chosen panel could cost for the prompt being written,
// from catalogue prices (GET <data-url>?chars=N&members=…&analyst=…&writer=…), refreshed a moment
// after the user stops typing. Unknown model ids show up here before anything is sent.
const DEBOUNCE_MS = 400;

export class CostEstimate {
  /** @param {HTMLFormElement} form  @param {HTMLElement} el  the [data-estimate] element (has data-url) */
  constructor(form, el) {
    this.form = form;
    this.el = el;
    this.url = el.dataset.url;
    this.timer = null;
    this.abort = null;
    this.last = "";
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), DEBOUNCE_MS);
  }

  #params() {
    const get = (name) => {
      const el = this.form.elements.namedItem(name);
      return el ? el.value : "";
    };
    const prompt = this.form.querySelector("[data-prompt]");
    const chars = String(prompt ? prompt.value.trim().length : 0);
    // A chosen preset runs with its whole config (max_tokens included): estimate that, not the fields.
    const preset = this.form.querySelector("[data-preset-select]");
    if (preset && preset.value) return new URLSearchParams({ chars, preset: preset.value }).toString();
    return new URLSearchParams({ chars, members: get("members"), analyst: get("analyst"), writer: get("writer") }).toString();
  }

  async refresh() {
    const query = this.#params();
    if (query === this.last) return;
    this.last = query;
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    let data;
    try {
      const response = await fetch(`${this.url}?${query}`, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        signal: this.abort.signal,
      });
      data = await response.json();
    } catch {
      return; // superseded, or offline: keep the last estimate
    }
    this.#show(data);
  }

  #show(data) {
    const el = this.el;
    el.hidden = false;
    el.classList.toggle("is-warn", Boolean(!data.ok || (data.unknown && data.unknown.length)));
    if (!data.ok) {
      // The panel editor already says what is wrong with the panel; keep this short.
      el.textContent = "No estimate";
      el.title = data.error || "";
      return;
    }
    if (data.unknown && data.unknown.length) {
      el.textContent = data.unknown[0];
      el.title = data.unknown.join("\n");
      return;
    }
    // Every amount comes formatted from the server (chat.spend.usd): the page only shows it.
    el.textContent = data.left_text == null ? `≈ ${data.text}` : `≈ ${data.text} · ${data.left_text} left today`;
    el.classList.toggle("is-warn", data.fits === false);
    const notes = [`Estimated cost of this run: ${data.calls} model calls (the panel, the analyst, the writer), from catalogue prices.`];
    if (data.left_text != null) notes.push(`${data.left_text} is left of today's limit${data.fits === false ? ": this run could cost more, so it would be refused" : ""}.`);
    if (data.unpriced && data.unpriced.length) notes.push(`No price known for ${data.unpriced.join(", ")} (counted as free).`);
    el.title = notes.join(" ");
  }
}
