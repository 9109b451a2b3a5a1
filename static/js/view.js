// One turn on the page: prompt, panel cards, analysis, fused answer, controls.
//
// `render()` draws everything from the run state (history, snapshots); the small methods below
// update one part for a live event. Both read the same state, so live and reloaded runs match.
import { analysisCounts, renderAnalysisBody } from "./analysis.js";
import { appendHTML, h, icon, ICONS, setHTML } from "./dom.js";
import { FeedbackControls } from "./feedback.js";
import { fmtCost, fmtInt, fmtMs, splitModel, tailBlocks, tokensOf } from "./format.js";
import { describeToolCall, isRunning, LIVE_MEMBER, MEMBER, memberEnding, memberStatusLabel, PHASE, RUN, runStatusSentence, safeHttpUrl, slotForModel, TERMINAL_MEMBER } from "./state.js";


// Icons of tool calls (inline SVG: no emoji font needed).
const TOOL_ICONS = {
  search: "M8.5 3a5.5 5.5 0 1 0 0 11a5.5 5.5 0 1 0 0-11zM12.5 12.5L17 17",
  page: "M5 2.5h6.5L15 6v11.5H5zM11.5 2.5V6H15M7.5 10h5M7.5 13h5",
  globe: "M10 2.5a7.5 7.5 0 1 0 0 15a7.5 7.5 0 1 0 0-15zM2.5 10h15M10 2.5c2.8 2.8 2.8 12.2 0 15M10 2.5c-2.8 2.8-2.8 12.2 0 15",
  tool: ICONS.spark,
};

/** A source as a link: built with DOM APIs, only for http(s) URLs; text, never HTML. */
// Messages an API request sent before its prompt (system prompts, earlier turns), folded.
function contextOf(turn) {
  const messages = turn.context || [];
  if (!messages.length) return null;
  const label = `Sent with ${messages.length} earlier message${messages.length === 1 ? "" : "s"} (API)`;
  return h("details", { class: "turn-context" },
    h("summary", {}, label),
    h("ol", {}, ...messages.map((m) => h("li", {}, h("span", { class: "context-role" }, `${m.role}: `), m.content))));
}

function sourceLink(source) {
  const href = safeHttpUrl(source.url);
  if (!href) return null;
  const u = new URL(href);
  const where = `${u.host}${u.pathname === "/" ? "" : u.pathname}`;
  return h(
    "a",
    { class: "source-link", href, rel: "noopener noreferrer nofollow", target: "_blank", referrerpolicy: "no-referrer", title: href },
    h("span", { class: "source-title" }, source.title || where),
    source.title ? h("span", { class: "source-host" }, u.host) : null,
  );
}

// The unfinished tail, formatted as it streams: elements built from text nodes only (the tail is
// untrusted model text, never HTML). Markdown markers stay in the text, hidden (`.md-mark`), so
// the tail's text is exactly what streamed.
const INLINE_TAGS = { strong: "strong", em: "em", code: "code" };

function mark(text) {
  return text ? h("span", { class: "md-mark" }, text) : null;
}

function inlineNodes(tokens) {
  return tokens.map((t) => (t.kind === "text" ? t.text : h(INLINE_TAGS[t.kind], {}, mark(t.open), t.text, mark(t.close))));
}

function renderTail(el, text) {
  const nodes = [];
  for (const b of tailBlocks(text)) {
    if (b.before) nodes.push(b.before);
    if (b.kind === "code") {
      const line = b.lines[0];
      nodes.push(h("pre", { class: "tail-code" }, mark(line.mark), h("code", {}, line.code)));
    } else if (b.kind === "list") {
      const list = h(b.ordered ? "ol" : "ul", { start: b.ordered && b.start !== 1 ? b.start : null });
      let item = null;
      for (const line of b.lines) {
        if (line.before) (line.item || !item ? list : item).append(line.before);
        if (line.item || !item) list.append((item = h("li", {})));
        item.append(...[mark(line.mark), ...inlineNodes(line.inline)].filter(Boolean));
      }
      nodes.push(list);
    } else if (b.lines.length) {
      const el = h(b.kind === "heading" ? `h${Math.min(6, b.level)}` : "p", {});
      for (const line of b.lines) el.append(...[line.before, mark(line.mark), ...inlineNodes(line.inline)].filter(Boolean));
      nodes.push(el);
    }
  }
  el.replaceChildren(...nodes);
}

/** Text the reader saw stream that the server did not store (conversation.js keepShownText). */
function lostTail(el, text) {
  if (!text) {
    el.replaceChildren();
    return;
  }
  el.replaceChildren(
    h(
      "div",
      { class: "lost-text", title: "Not saved: the server stopped before it stored this part" },
      h("p", { class: "lost-note" }, "Not saved — the server stopped before storing the rest, shown as it streamed:"),
      h("div", { class: "lost-body" }, text),
    ),
  );
}

/** What made a version, in a few words: "original", "rewritten with writer", "atlas retried", … */
function versionLabel(run) {
  const v = run.version;
  if (!v) return "original";
  if (v.kind === "rewrite") return `rewritten with ${splitModel(v.writer || run.writer).name}`;
  if (v.kind === "retry_member") {
    const m = run.members.find((x) => x.slot === v.slot);
    return `${m ? m.label || splitModel(m.model).name : "member"} retried`;
  }
  return { retry_stopped: "stopped retried", resend: "prompt resent", fuse: "re-fused" }[v.kind] || v.kind;
}

function pill(status, label = status) {
  return h("span", { class: `pill pill-${status}` }, label);
}

function metricList(items) {
  const rows = items.filter(([, v]) => v !== null && v !== undefined && v !== "");
  if (!rows.length) return null;
  return h(
    "dl",
    { class: "metrics" },
    rows.map(([k, v, title]) => h("div", { title: title || null }, h("dt", {}, k), h("dd", {}, v))),
  );
}

// A call cut short (stopped, failed, timed out, interrupted) often reports no usage; the server
// then estimates its cost from the characters sent and streamed (docs/protocol.md, usage).
const ESTIMATED_TITLE = "Estimated: the provider reported no usage for a call that was cut short";

/** "$0.0123", or "≈ $0.0123 (estimated)" when the server estimated part of it. */
function costOf(usage) {
  const cost = fmtCost(usage.cost);
  return cost && usage.estimated ? `≈ ${cost} (estimated)` : cost;
}

function elapsedMs(run) {
  if (!run.started_at) return null;
  const t = Date.parse(run.started_at);
  return Number.isNaN(t) ? null : Math.max(0, Date.now() - t);
}

export class TurnView {
  constructor(run, { onAction }) {
    this.run = run;
    this.onAction = onAction;
    this.versions = [run]; // every run of the turn, oldest first (setVersions)
    this.cards = new Map();
    this.compact = null; // null: automatic (compact once the fused answer is done)
    this.root = h("article", { class: "turn" });
    this.root.addEventListener("click", (e) => this.#onClick(e));
    this.root.addEventListener("mouseover", (e) => this.#onHover(e, true));
    this.root.addEventListener("mouseout", (e) => this.#onHover(e, false));
    this.root.addEventListener("focusin", (e) => this.#onHover(e, true));
    this.root.addEventListener("focusout", (e) => this.#onHover(e, false));
    this.root.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.defaultPrevented && e.target.matches("[data-regen-input]")) {
        e.preventDefault();
        this.#regenerate();
      }
    });
    // Accept / Reject under the fused answer; kept across redraws, so a note being typed stays.
    this.feedback = new FeedbackControls((r, body) => this.onAction("feedback", r, body));
    this.render();
  }

  setRun(run) {
    // An error of "Rewrite with" belongs to the run it was about: a new run clears it.
    if (run.run !== this.run.run) this.regenErrorText = "";
    this.run = run;
    if (!this.versions.includes(run)) this.versions = [run];
    this.render();
  }

  /** The server refused the last "Rewrite with": say why next to the field, keep what was typed. */
  regenFailed(message) {
    this.regenWaiting = false;
    this.regenErrorText = message;
    this.#regenControls();
    const input = this.regen.querySelector("[data-regen-input]");
    if (input) input.focus();
  }

  /** The turn's versions (its runs, oldest first) and the one to show. */
  setVersions(versions, run) {
    this.versions = versions.length ? versions : [run];
    this.setRun(run);
  }

  /** ‹ 2/3 › between the turn's versions; `part` names what it switches, for screen readers. */
  #versionSwitcher(part) {
    const n = this.versions.length;
    const i = this.versions.indexOf(this.run);
    if (n < 2 || i < 0) return null;
    const busy = this.versions.some((v) => isRunning(v));
    const what = versionLabel(this.run);
    const button = (dir, label, glyph, disabled) =>
      h("button", { type: "button", class: "version-btn", data: { action: "version", to: i + dir }, aria: { label }, disabled: disabled || busy ? true : null }, glyph);
    return h(
      "span",
      { class: "versions", role: "group", aria: { label: `Versions of the ${part}` }, data: { versions: part } },
      button(-1, `Previous version of the ${part}`, "‹", i === 0),
      h("span", { class: "version-count", aria: { live: "polite" }, title: what }, `${i + 1}/${n}`),
      button(1, `Next version of the ${part}`, "›", i === n - 1),
      h("span", { class: "version-what" }, what),
    );
  }

  // ------------------------------------------------------------------ whole turn

  render() {
    const run = this.run;
    const key = run.turn.id ?? run.client_run_id;
    this.root.id = `turn-${key}`;
    this.root.dataset.turn = String(run.turn.id ?? "");
    this.root.setAttribute("aria-label", `Turn ${run.turn.index === null ? "" : run.turn.index + 1}`.trim());

    this.promptEl = h("div", { class: "turn-prompt" }, contextOf(run.turn), h("div", { class: "prompt-bubble" }, run.turn.prompt || ""));

    this.panelActions = h("div", { class: "section-actions" });
    this.panelMeta = h("span", { class: "section-meta" });
    this.row = h("div", { class: "panel-row", data: { cols: Math.max(1, Math.min(run.members.length, 4)) } });
    this.noticeEl = h("div", { class: "panel-notice", hidden: true });
    this.panel = h(
      "section",
      { class: "panel", aria: { label: "Panel answers" } },
      h("div", { class: "section-head" }, h("h3", { class: "section-title" }, "Panel"), this.panelMeta, this.panelActions),
      this.noticeEl,
      this.row,
    );
    // A redraw keeps what the reader opened.
    const openReasoning = new Set([...this.cards].filter(([, c]) => c.reasoning.open).map(([slot]) => slot));
    this.cards.clear();
    for (const m of run.members) {
      const card = this.#buildCard(m);
      card.reasoning.open = openReasoning.has(m.slot);
      this.cards.set(m.slot, card);
      this.row.append(card.root);
      this.memberBody(m.slot);
      this.memberChrome(m.slot);
      this.memberResearch(m.slot);
    }

    this.analysisEl = h("div", { class: "analysis-slot" });
    this.fusedEl = this.#buildFused();
    this.root.replaceChildren(this.promptEl, this.panel, this.analysisEl, this.fusedEl);
    this.analysis();
    this.finalBody();
    this.runSources();
    this.researchNotice();
    this.controls();
  }

  // ------------------------------------------------------------------ members

  #buildCard(m) {
    const { provider, name } = splitModel(m.model);
    const card = {};
    card.pill = h("span");
    card.reasoningText = h("div", { class: "reasoning-text" });
    card.reasoning = h("details", { class: "reasoning", hidden: true }, h("summary", {}, "Reasoning"), card.reasoningText);
    card.placeholder = h("p", { class: "placeholder" });
    card.blocks = h("div", { class: "blocks" });
    card.tail = h("div", { class: "tail" });
    card.body = h("div", { class: "card-body prose" }, card.placeholder, card.blocks, card.tail);
    card.error = h("div", { class: "card-error", hidden: true });
    card.notes = h("div", { class: "card-notes", hidden: true });
    card.tools = h("ol", { class: "tool-calls", hidden: true, aria: { label: "Web research" } });
    card.sourcesList = h("ul", { class: "source-list" });
    card.sourcesTitle = h("summary", {});
    card.sources = h("details", { class: "card-sources", hidden: true }, card.sourcesTitle, card.sourcesList);
    card.foot = h("footer", { class: "card-foot" });
    const title = h(
      "div",
      { class: "card-title" },
      h("span", { class: "card-model", title: m.model }, m.label || name),
      h("span", { class: "card-provider" }, provider || "default provider"),
    );
    card.root = h(
      "article",
      { class: `card hue-${m.slot % 8}`, data: { slot: m.slot }, aria: { label: `Answer from ${m.model}` } },
      h("header", { class: "card-head" }, h("span", { class: "swatch", aria: { hidden: "true" } }), title, card.pill),
      card.notes,
      card.reasoning,
      card.tools,
      card.body,
      card.sources,
      card.error,
      card.foot,
    );
    return card;
  }

  member(slot) {
    return this.run.members.find((m) => m.slot === slot);
  }

  /** The answer text from scratch: final HTML, or finished blocks + the unfinished tail. */
  memberBody(slot) {
    const m = this.member(slot);
    const card = this.cards.get(slot);
    if (!m || !card) return;
    if (m.html !== null && m.html !== undefined) {
      setHTML(card.blocks, m.html);
      lostTail(card.tail, m.lost);
    } else {
      setHTML(card.blocks, m.blocks_html);
      renderTail(card.tail, m.content.slice(m.consumed));
    }
    card.reasoningText.textContent = m.reasoning;
    this.#memberPlaceholder(m, card);
  }

  /** New finished blocks and the tail after a delta. */
  memberText(slot, blocks) {
    const m = this.member(slot);
    const card = this.cards.get(slot);
    if (!m || !card) return;
    for (const b of blocks) appendHTML(card.blocks, b);
    renderTail(card.tail, m.content.slice(m.consumed));
    this.#memberPlaceholder(m, card);
  }

  memberReasoning(slot, text) {
    const card = this.cards.get(slot);
    if (!card || !text) return;
    card.reasoningText.append(document.createTextNode(text));
    card.reasoning.hidden = false;
  }

  /** Tool calls (live), notes and the member's sources. */
  memberResearch(slot) {
    const m = this.member(slot);
    const card = this.cards.get(slot);
    if (!m || !card) return;
    card.tools.replaceChildren(
      ...m.tool_calls.map((c) => {
        const { kind, label } = describeToolCall(c);
        const state = c.status === "running" ? "running" : c.ok === false || c.status === "failed" ? "failed" : "done";
        const busy = kind === "search" ? "searching…" : kind === "page" ? "reading…" : "working…";
        const outcome = state === "running" ? busy : c.summary || (state === "failed" ? "failed" : "done");
        return h(
          "li",
          { class: `tool-call is-${state}`, data: { tool: c.name || "" }, title: label },
          h("span", { class: "tool-icon", aria: { hidden: "true" } }, icon(TOOL_ICONS[kind] || TOOL_ICONS.tool, 13)),
          h("span", { class: "tool-label" }, label),
          h("span", { class: "tool-outcome", role: state === "failed" ? "note" : null }, outcome),
        );
      }),
    );
    card.tools.hidden = !m.tool_calls.length;

    card.notes.replaceChildren(...m.notes.map((n) => h("div", { class: "notice notice-warn", role: "note" }, h("p", {}, n))));
    card.notes.hidden = !m.notes.length;

    const links = m.sources.map((s) => sourceLink(s)).filter(Boolean);
    card.sourcesList.replaceChildren(...links.map((a) => h("li", {}, a)));
    card.sourcesTitle.textContent = `Sources (${links.length})`;
    card.sources.hidden = !links.length;
    if (links.length && !card.sourcesTouched) card.sources.open = true;
    if (!card.sourcesWired) {
      card.sources.addEventListener("toggle", () => (card.sourcesTouched = true));
      card.sourcesWired = true;
    }
  }

  #memberPlaceholder(m, card) {
    const empty = !m.content && !(m.html || "").trim();
    let text = "";
    if (empty) {
      if (m.status === MEMBER.SEARCHING) text = "Researching the web…";
      else if (m.status === MEMBER.WAITING && m.tool_calls && m.tool_calls.length) text = "Reading what it found…";
      else if (m.status === MEMBER.WAITING) text = this.run.pending ? "Starting…" : "Waiting for the first token…";
      else if (m.status === MEMBER.THINKING) text = "Thinking…";
      else if (m.status === MEMBER.STREAMING) text = "";
      else if (m.status === MEMBER.COMPLETE) text = "(empty answer)";
      else text = "No answer.";
    }
    card.placeholder.textContent = text;
    card.placeholder.hidden = !text;
  }

  /** Header pill, reasoning fold, error, footer metrics and buttons. */
  memberChrome(slot) {
    const m = this.member(slot);
    const card = this.cards.get(slot);
    if (!m || !card) return;
    const status = m.status === MEMBER.COMPLETE ? "done" : m.status;
    // A member whose process died is "interrupted", not a stop the user asked for.
    const interrupted = m.error && m.error.kind === "interrupted" && m.status === MEMBER.STOPPED;
    const skipped = memberEnding(m) === "skipped"; // by Fuse now: a stop, not a failure
    card.pill.replaceWith((card.pill = interrupted ? pill("interrupted", "interrupted") : skipped ? pill("skipped", "skipped") : pill(status, memberStatusLabel(m.status))));
    card.root.classList.toggle("is-streaming", m.status === MEMBER.STREAMING && m.html === null);
    card.root.setAttribute("aria-busy", String(LIVE_MEMBER.has(m.status) && isRunning(this.run)));
    card.reasoning.hidden = !m.reasoning;

    // Error or stop, in a sentence a user can act on.
    card.error.replaceChildren();
    card.error.hidden = true;
    if (m.status === MEMBER.FAILED) {
      const message = (m.error && m.error.message) || "This member failed.";
      card.error.append(h("div", { class: "notice notice-error", role: "note" }, h("p", {}, message)));
      card.error.hidden = false;
    } else if (m.status === MEMBER.STOPPED) {
      const ms = m.metrics && m.metrics.duration_ms;
      const custom = m.error && m.error.message && m.error.kind !== "cancelled" ? m.error.message : "";
      const base = ms ? `Stopped after ${fmtMs(ms)}` : "Stopped";
      const sentence = custom || `${base}${m.content ? "." : " with no tokens."}`;
      // A stop the user asked for is not a problem: neutral, not a warning colour.
      card.error.append(h("div", { class: "notice notice-neutral", role: "note" }, h("p", {}, sentence)));
      card.error.hidden = false;
    }

    // Footer: metrics once the member is done; per-card Stop / Retry.
    const metrics = m.metrics || {};
    const usage = metrics.usage || {};
    const tokens = tokensOf(usage);
    const done = TERMINAL_MEMBER.has(m.status);
    const list = done
      ? metricList([
          ["TTFT", metrics.ttft_ms === null || metrics.ttft_ms === undefined ? null : fmtMs(metrics.ttft_ms), "Time to first token"],
          ["Time", metrics.duration_ms === null || metrics.duration_ms === undefined ? null : fmtMs(metrics.duration_ms), "Duration"],
          ["Tokens", tokens ? fmtInt(tokens) : null, usage.prompt_tokens !== undefined ? `${fmtInt(usage.prompt_tokens || 0)} in · ${fmtInt(usage.completion_tokens || 0)} out` : null],
          ["Cost", costOf(usage), usage.estimated ? ESTIMATED_TITLE : "Provider-reported cost"],
        ])
      : null;
    const actions = h("div", { class: "card-actions" });
    const running = isRunning(this.run) && !this.run.pending;
    if (running && this.run.phase === PHASE.PANEL && LIVE_MEMBER.has(m.status)) {
      actions.append(
        h("button", { type: "button", class: "btn btn-tiny btn-stop", data: { action: "stop_member", slot: m.slot }, aria: { label: `Stop ${m.model}` } }, icon(ICONS.stop, 12), "Stop"),
      );
    }
    const canRetry = (m.status === MEMBER.FAILED || m.status === MEMBER.STOPPED) && !this.run.pending && this.run.run && (!running || this.run.phase === PHASE.PANEL);
    if (canRetry) {
      actions.append(
        h("button", { type: "button", class: "btn btn-tiny", data: { action: "retry_member", slot: m.slot }, aria: { label: `Retry ${m.model}` } }, icon(ICONS.retry, 12), "Retry"),
      );
    }
    card.foot.replaceChildren(...[list, actions.childElementCount ? actions : null].filter(Boolean));
  }

  // ------------------------------------------------------------------ analysis

  analysis() {
    const run = this.run;
    const el = this.analysisEl;
    el.replaceChildren();
    if (run.analysis) {
      const details = h(
        "details",
        { class: "analysis", open: this.analysisOpen === false ? null : true },
        h(
          "summary",
          {},
          h("h3", { class: "section-title" }, "Analysis"),
          h("span", { class: "analysis-counts" }, analysisCounts(run.analysis)),
          run.analyst ? h("span", { class: "section-meta" }, `by ${splitModel(run.analyst).name}`) : null,
          this.#versionSwitcher("analysis"),
        ),
        renderAnalysisBody(run),
      );
      details.addEventListener("toggle", () => (this.analysisOpen = details.open));
      el.append(details);
    } else if (run.analysis_error) {
      el.append(
        h(
          "div",
          { class: "notice notice-warn analysis-degraded", role: "note" },
          h("div", { class: "notice-text" }, h("p", {}, h("strong", {}, "No analysis for this turn. "), run.analysis_error), h("p", {}, "The writer worked from the raw answers.")),
        ),
      );
    } else if (isRunning(run) && run.phase === PHASE.ANALYSIS) {
      el.append(
        h(
          "div",
          { class: "analysis analysis-pending", role: "status" },
          pill("analysing", "analysing"),
          h("span", {}, `${run.analyst ? splitModel(run.analyst).name : "The analyst"} is comparing the answers…`),
          h("span", { class: "shimmer", aria: { hidden: "true" } }),
        ),
      );
    }
    el.hidden = !el.childElementCount;
  }

  // ------------------------------------------------------------------ fused answer

  #buildFused() {
    this.finalPill = h("span");
    this.finalWriter = h("span", { class: "fused-writer" });
    this.finalPlaceholder = h("p", { class: "placeholder" });
    this.finalBlocks = h("div", { class: "blocks" });
    this.finalTail = h("div", { class: "tail" });
    this.finalBodyEl = h("div", { class: "fused-body prose" }, this.finalPlaceholder, this.finalBlocks, this.finalTail);
    this.finalError = h("div", { class: "fused-error", hidden: true });
    this.finalNote = h("div", { class: "fused-note", hidden: true });
    this.runSourcesEl = h("section", { class: "run-sources", hidden: true, aria: { label: "Sources" } });
    this.totals = h("dl", { class: "totals" });
    this.regen = h("div", { class: "regen" });
    this.fusedActions = h("div", { class: "section-actions" });
    this.finalVersions = h("span", { class: "fused-versions" });
    this.recoverEl = h("div", { class: "recover", hidden: true });
    return h(
      "section",
      { class: "fused", aria: { label: "Fused answer" } },
      h(
        "div",
        { class: "fused-head" },
        h("h3", { class: "fused-title" }, icon(ICONS.fuse, 16), "Fused answer"),
        this.finalWriter,
        this.finalPill,
        this.finalVersions,
        this.fusedActions,
      ),
      this.finalBodyEl,
      this.finalNote,
      this.runSourcesEl,
      this.finalError,
      this.recoverEl,
      this.feedback.root,
      h("footer", { class: "fused-foot" }, this.totals, this.regen),
      (this.receiptEl = h("details", { class: "receipt", hidden: true })),
    );
  }

  /** The run's sources under the fused answer, each with the members that used it. */
  runSources() {
    const run = this.run;
    const items = (run.sources || [])
      .map((s) => {
        const link = sourceLink(s);
        if (!link) return null;
        const tags = (s.members || []).map((key) => {
          const slot = slotForModel(run, key);
          const m = slot === null ? null : run.members.find((x) => x.slot === slot);
          const name = m ? m.label || splitModel(m.model).name : splitModel(key).name;
          return h(
            "span",
            { class: `mtag${slot === null ? " is-unknown" : ` hue-${slot % 8}`}`, data: slot === null ? null : { slot }, title: key },
            name,
          );
        });
        return h("li", {}, link, h("span", { class: "source-members" }, tags));
      })
      .filter(Boolean);
    this.runSourcesEl.replaceChildren();
    if (items.length) {
      this.runSourcesEl.append(h("h4", { class: "run-sources-title" }, `Sources (${items.length})`), h("ol", { class: "source-list" }, items));
    }
    this.runSourcesEl.hidden = !items.length;
  }

  /** Why web search is not offered although the panel asked for web tools. */
  researchNotice() {
    const notice = this.run.research_notice;
    this.noticeEl.replaceChildren();
    if (notice) this.noticeEl.append(h("div", { class: "notice notice-warn research-notice", role: "note" }, h("p", {}, notice)));
    this.noticeEl.hidden = !notice;
  }

  finalBody() {
    const f = this.run.final;
    if (f.html !== null && f.html !== undefined) {
      setHTML(this.finalBlocks, f.html);
      lostTail(this.finalTail, f.lost);
    } else {
      setHTML(this.finalBlocks, f.blocks_html);
      renderTail(this.finalTail, f.content.slice(f.consumed));
    }
    this.#finalPlaceholder();
  }

  finalText(blocks) {
    const f = this.run.final;
    for (const b of blocks) appendHTML(this.finalBlocks, b);
    renderTail(this.finalTail, f.content.slice(f.consumed));
    this.#finalPlaceholder();
  }

  #finalPlaceholder() {
    const run = this.run;
    const f = run.final;
    let text = "";
    if (!f.content && !(f.html || "").trim()) {
      if (run.pending) text = "Starting the panel…";
      else if (isRunning(run)) {
        text =
          run.phase === PHASE.PANEL
            ? "The fused answer appears here once the panel has answered."
            : run.phase === PHASE.ANALYSIS
              ? "Waiting for the analysis…"
              : "Writing…";
      } else if (run.status === RUN.COMPLETE) text = "(empty answer)";
    }
    this.finalPlaceholder.textContent = text;
    this.finalPlaceholder.hidden = !text;
    // A run that ended without writing anything shows only its reason, not an empty box.
    this.finalBodyEl.hidden = !text && !f.content && !(f.html || "").trim();
  }

  // ------------------------------------------------------------------ controls, totals, status

  controls() {
    const run = this.run;
    const running = isRunning(run);
    const started = !run.pending && run.run;

    // Panel header: count, Fuse now, Stop, Expand/Compact.
    const n = run.members.length;
    const done = run.members.filter((m) => m.status === MEMBER.COMPLETE).length;
    const endings = ["failed", "stopped", "skipped", "interrupted"]
      .map((kind) => [kind, run.members.filter((m) => memberEnding(m) === kind).length])
      .filter(([, count]) => count)
      .map(([kind, count]) => ` · ${count} ${kind}`)
      .join("");
    this.panelMeta.textContent = running && run.phase === PHASE.PANEL ? `${done} of ${n} answered${endings}` : `${n} model${n === 1 ? "" : "s"}${endings}`;

    this.panelActions.replaceChildren();
    const stillAnswering = run.members.some((m) => LIVE_MEMBER.has(m.status));
    if (running && started && run.phase === PHASE.PANEL && done > 0 && stillAnswering) {
      this.panelActions.append(
        h("button", { type: "button", class: "btn btn-small", data: { action: "fuse_now" }, title: "Stop waiting and fuse the answers that are ready" }, icon(ICONS.fuse), "Fuse now"),
      );
    }
    if (running && started) {
      this.panelActions.append(
        h("button", { type: "button", class: "btn btn-small btn-stop", data: { action: "stop" }, title: "Stop the whole run (Esc)" }, icon(ICONS.stop, 12), "Stop all"),
      );
    }
    const compact = this.#isCompact();
    this.panel.classList.toggle("is-compact", compact);
    if (!running && (run.final.content || run.final.html)) {
      this.panelActions.append(
        h(
          "button",
          { type: "button", class: "btn btn-small btn-ghost", data: { action: "toggle-panel" }, aria: { expanded: String(!compact) } },
          icon(compact ? ICONS.expand : ICONS.collapse),
          compact ? "Expand answers" : "Compact",
        ),
      );
    }

    // Fused header: writer and status.
    this.finalWriter.textContent = run.writer ? `by ${splitModel(run.writer).name}` : "";
    this.finalWriter.title = run.writer || "";
    let status;
    if (running) status = run.phase === PHASE.FINAL ? pill("streaming", "writing") : pill("waiting", "waiting");
    else if (run.status === RUN.COMPLETE && run.version && run.version.kind === "retry_member" && !(run.final.content || "").trim()) {
      status = pill("skipped", "not fused"); // a member retried alone: re-fusing is the user's choice
    } else if (run.status === RUN.COMPLETE) status = pill("done", "done");
    else if (run.status === RUN.CANCELLED) status = pill("stopped", "stopped");
    else status = pill("failed", runStatusSentence(run).toLowerCase());
    this.finalPill.replaceWith((this.finalPill = status));
    const switcher = this.#versionSwitcher("fused answer");
    this.finalVersions.replaceChildren(...(switcher ? [switcher] : []));
    this.fusedEl.classList.toggle("is-streaming", running && run.phase === PHASE.FINAL);
    this.fusedEl.setAttribute("aria-busy", String(running));

    this.fusedActions.replaceChildren();
    if (!running && (run.final.content || "").trim() && navigator.clipboard) {
      this.fusedActions.append(
        h("button", { type: "button", class: "btn btn-tiny btn-ghost", data: { action: "copy" }, title: "Copy the fused answer as Markdown" }, icon(ICONS.copy, 12), "Copy"),
      );
    }

    // The fused answer was cut at the server's output cap (docs/protocol.md: timings.final_truncated_at).
    const cut = run.timings && run.timings.final_truncated_at;
    this.finalNote.replaceChildren();
    if (cut) {
      const sentence = `Output truncated at ${Number(cut).toLocaleString("en-US")} characters.`;
      this.finalNote.append(h("div", { class: "notice notice-warn", role: "note" }, h("p", {}, sentence)));
    }
    this.finalNote.hidden = !cut;

    // Run-level failure.
    this.finalError.replaceChildren();
    this.finalError.hidden = true;
    if (!running && run.status !== RUN.COMPLETE && run.error) {
      const cls = run.status === RUN.CANCELLED ? "notice notice-neutral" : "notice notice-error";
      const message = run.error.message || runStatusSentence(run);
      this.finalError.append(h("div", { class: cls, role: "note" }, h("p", {}, message)));
      this.finalError.hidden = false;
    }

    this.tick();
    this.#recoverControls();
    this.#regenControls();
    this.feedback.update(run);
    this.#finalPlaceholder();
  }

  /** Totals; while running, the elapsed time (called every second by the page). */
  tick() {
    const run = this.run;
    const usage = run.usage || {};
    const running = isRunning(run);
    const wall = running ? elapsedMs(run) : run.timings && run.timings.total !== undefined ? run.timings.total : null;
    const tokens = tokensOf(usage);
    // The turn's cost is every run of it (original, retries, rewrites), from the server's ledger.
    const receipt = this.#receipt();
    const rows = [
      [running ? "Elapsed" : "Wall time", wall === null ? null : fmtMs(wall), "Whole run, from send to the last token"],
      ["Tokens", tokens ? fmtInt(tokens) : null, "All calls: panel, analyst and writer"],
      receipt && receipt.runs > 1
        ? ["Turn cost", `${receipt.estimated ? "≈ " : ""}${receipt.cost_text}`, `All ${receipt.runs} runs of this turn (${receipt.calls} calls); the version shown cost ${receipt.kept_cost_text}`]
        : ["Cost", receipt ? `${receipt.estimated ? "≈ " : ""}${receipt.cost_text}` : costOf(usage), usage.estimated || (receipt && receipt.estimated) ? `${ESTIMATED_TITLE} (some calls)` : "Provider-reported cost of all calls"],
    ];
    const tools = run.tool_usage || {};
    const server = tools.server_tool_use || {};
    const searches = (Number(tools.searches) || 0) + (Number(server.web_search_requests) || 0);
    if (searches) rows.push(["Searches", fmtInt(searches), tools.search_cost_usd ? `Web searches (${fmtCost(tools.search_cost_usd)})` : "Web searches"]);
    // `fetches` counts web_fetch calls (docs/protocol.md), refused and failed ones included: not pages read.
    if (tools.fetches) rows.push(["Fetches", fmtInt(tools.fetches), "web_fetch calls, refused and failed ones included"]);
    const items = rows
      .filter(([, v]) => v)
      .map(([k, v, title]) => h("div", { title }, h("dt", {}, k), h("dd", {}, v)));
    // Members without an answer, by how they ended: only errors are "Failed" (in red); a stop,
    // a skip by Fuse now or an interruption is its own, neutral, state.
    for (const [kind, label] of [["failed", "Failed"], ["stopped", "Stopped"], ["skipped", "Skipped"], ["interrupted", "Interrupted"]]) {
      const members = run.members.filter((m) => memberEnding(m) === kind);
      if (!members.length) continue;
      const names = members.map((m) => m.label || splitModel(m.model).name);
      items.push(h("div", { class: kind === "failed" ? "is-bad" : "is-neutral", title: members.map((m) => m.model).join(", "), data: { ending: kind } }, h("dt", {}, label), h("dd", {}, `${members.length}: ${names.join(", ")}`)));
    }
    this.totals.replaceChildren(...items);
  }

  /** The turn's receipt (chat.spend.turn_receipt): kept across a new run of the turn until its own arrives. */
  #receipt() {
    const receipt = this.run.receipt || this.lastReceipt || null;
    // Drawn once per receipt and element (render() builds the section anew).
    if (receipt !== this.receiptEl.drawn) this.#drawReceipt(receipt);
    this.lastReceipt = receipt;
    return receipt;
  }

  /** Every call of every run of the turn, as the server priced it; the page only displays. */
  #drawReceipt(receipt) {
    const el = this.receiptEl;
    el.drawn = receipt;
    const open = el.open;
    el.replaceChildren();
    el.hidden = !receipt || !receipt.lines.length;
    if (el.hidden) return;
    const roles = { panel: "Member", analyst: "Analyst", writer: "Writer", search: "Web search", run: "Whole run" };
    const cost = (line) => `${line.estimated ? "≈ " : ""}${line.cost_text}`;
    const own = [receipt.analyst, receipt.writer]
      .filter(Boolean)
      .map((line) => `${roles[line.role]} ${splitModel(line.model).name}: TTFT ${line.ttft_ms == null ? "—" : fmtMs(line.ttft_ms)} · ${fmtInt(line.prompt_tokens + line.completion_tokens)} tokens · ${cost(line)}`);
    const rows = receipt.lines.map((line) =>
      h(
        "tr",
        { class: line.kept === false ? "is-dropped" : null },
        h("td", { class: "num" }, String(line.attempt)),
        h("td", {}, line.role === "panel" && line.slot != null ? `${roles.panel} ${line.slot + 1}` : roles[line.role] || line.role),
        h("td", {}, h("code", { title: line.model }, line.model ? splitModel(line.model).name : "—")),
        h("td", {}, line.status || ""),
        h("td", { class: "num" }, line.ttft_ms == null ? "—" : fmtMs(line.ttft_ms)),
        h("td", { class: "num", title: `${fmtInt(line.prompt_tokens)} in · ${fmtInt(line.completion_tokens)} out` }, `${fmtInt(line.prompt_tokens)} / ${fmtInt(line.completion_tokens)}`),
        h("td", { class: "num", title: line.estimated ? ESTIMATED_TITLE : "Provider-reported cost" }, cost(line)),
        h("td", {}, line.kept === null ? "—" : line.kept ? "kept" : "not kept"),
      ),
    );
    const runs = receipt.runs === 1 ? "1 run" : `${receipt.runs} runs`;
    const parts = [
      h("summary", {}, `Receipt: ${receipt.calls} calls in ${runs}, ${receipt.estimated ? "≈ " : ""}${receipt.cost_text}`),
      own.length ? h("p", { class: "receipt-own" }, own.join(" · ")) : null,
      h(
        "div",
        { class: "receipt-scroll" },
        h(
          "table",
          { class: "receipt-table" },
          h("thead", {}, h("tr", {}, ...["Run", "Role", "Model", "Status", "TTFT", "Tokens in / out", "Cost", "Kept"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, ...rows),
          h("tfoot", {}, h("tr", {}, h("th", { scope: "row", colspan: "6" }, `Total (the version shown: ${receipt.kept_cost_text})`), h("td", { class: "num" }, `${receipt.estimated ? "≈ " : ""}${receipt.cost_text}`), h("td", {}))),
        ),
      ),
      h("p", { class: "receipt-foot" }, "≈ marks calls cut short whose cost is estimated. Kept: its output is in the version shown."),
    ];
    el.append(...parts.filter(Boolean));
    el.open = open;
  }

  /** After Stop all or an interruption, and after a member retried alone: what the user may do next. */
  #recoverControls() {
    const run = this.run;
    this.recoverEl.replaceChildren();
    const answered = run.members.filter((m) => m.status === MEMBER.COMPLETE);
    const unanswered = run.members.filter((m) => m.status !== MEMBER.COMPLETE);
    const button = (mode, label, title) =>
      h("button", { type: "button", class: "btn btn-small", data: { action: "rerun", mode }, title }, label);
    const retried = run.version && run.version.kind === "retry_member";
    const buttons = [];
    let sentence = "";
    if (isRunning(run) || !run.run) {
      // nothing to offer while it runs
    } else if (retried && run.status === RUN.COMPLETE && !(run.final.content || "").trim()) {
      const m = run.members.find((x) => x.slot === run.version.slot);
      const name = m ? m.label || splitModel(m.model).name : "The member";
      sentence = `${name} answered again. The analysis and the fused answer were not redone: the earlier version keeps them.`;
      buttons.push(button("fuse", "Re-fuse with this answer", "Analyse the answers of this version and write the fused answer again"));
    } else if ([RUN.CANCELLED, RUN.INTERRUPTED, RUN.TIMEOUT, RUN.ERROR].includes(run.status)) {
      // The run's own notice above says why it ended; these are the ways on.
      if (unanswered.length) buttons.push(button("retry_stopped", "Retry all stopped", "Ask the members without an answer again, then fuse"));
      buttons.push(button("resend", "Resend prompt", "Run the whole prompt again, as a new version of this turn"));
      if (answered.length) buttons.push(button("fuse", "Fuse what we have", `Analyse and fuse the ${answered.length} answer${answered.length === 1 ? "" : "s"} there are`));
    }
    if (buttons.length) {
      if (sentence) this.recoverEl.append(h("p", { class: "recover-text" }, sentence));
      this.recoverEl.append(h("div", { class: "recover-actions" }, buttons));
    }
    this.recoverEl.hidden = !buttons.length;
  }

  #regenControls() {
    const run = this.run;
    this.regen.replaceChildren();
    const anyAnswer = run.members.some((m) => m.status === MEMBER.COMPLETE);
    if (isRunning(run) || !run.run || !anyAnswer) return;
    const id = `regen-${run.run}`;
    const errorId = `${id}-error`;
    const error = this.regenErrorText || "";
    const input = h("input", {
      id,
      type: "text",
      value: this.regenValue ?? (run.writer || ""),
      spellcheck: "false",
      autocomplete: "off",
      placeholder: "writer model id",
      data: { regenInput: "", modelPicker: "" },
      aria: { invalid: error ? "true" : "false", describedby: error ? errorId : null },
    });
    // Typing a new id is fixing the error: it goes away.
    input.addEventListener("input", () => {
      this.regenValue = input.value;
      if (!this.regenErrorText) return;
      this.regenErrorText = "";
      input.setAttribute("aria-invalid", "false");
      input.removeAttribute("aria-describedby");
      this.regen.querySelector(".regen-error")?.remove();
    });
    this.regen.append(
      h("label", { for: id }, "Rewrite with"),
      input,
      h("button", { type: "button", class: "btn btn-tiny", data: { action: "regenerate" } }, icon(ICONS.retry, 12), "Rewrite"),
    );
    // Element.append writes null as the text "null": add the error only when there is one.
    if (error) this.regen.append(h("p", { class: "regen-error", id: errorId, role: "alert" }, error));
  }

  #isCompact() {
    const run = this.run;
    if (isRunning(run) || !(run.final.content || run.final.html)) return false;
    return this.compact === null ? true : this.compact;
  }

  // ------------------------------------------------------------------ events

  #regenerate() {
    const input = this.regen.querySelector("[data-regen-input]");
    const writer = input ? input.value.trim() : "";
    if (!writer) {
      input && input.focus();
      return;
    }
    this.regenWaiting = true;
    this.onAction("regenerate", this.run, { writer });
  }

  #onClick(e) {
    const button = e.target.closest("[data-action]");
    if (!button || !this.root.contains(button)) return;
    const action = button.dataset.action;
    const slot = button.dataset.slot === undefined ? undefined : Number(button.dataset.slot);
    if (action === "version") {
      e.preventDefault(); // inside the analysis' <summary>: switch, do not fold
      const run = this.versions[Number(button.dataset.to)];
      if (run) this.onAction("version", run, {});
      return;
    }
    if (action === "rerun") {
      button.disabled = true;
      this.onAction("rerun", this.run, { mode: button.dataset.mode });
      return;
    }
    if (action === "toggle-panel") {
      this.compact = !this.#isCompact();
      this.controls();
      return;
    }
    if (action === "show-member") {
      const card = this.cards.get(slot);
      if (card) {
        // The reader wants to check the judge against this answer: show all of it, not the compact fold.
        card.root.classList.add("is-expanded");
        card.root.scrollIntoView({ block: "nearest", inline: "nearest", behavior: "smooth" });
        this.#highlight(slot, true);
      }
      return;
    }
    if (action === "copy") {
      navigator.clipboard.writeText(this.run.final.content).then(
        () => this.onAction("copied", this.run, {}),
        () => {},
      );
      return;
    }
    if (action === "regenerate") {
      this.#regenerate();
      return;
    }
    button.disabled = true; // until the server answers with new state
    this.onAction(action, this.run, { slot });
  }

  #onHover(e, on) {
    const tag = e.target.closest && e.target.closest(".mtag[data-slot]");
    if (!tag) return;
    this.#highlight(Number(tag.dataset.slot), on);
  }

  #highlight(slot, on) {
    for (const [s, card] of this.cards) card.root.classList.toggle("is-highlighted", on && s === slot);
  }
}
