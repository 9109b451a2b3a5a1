// Run state: the snapshot shape of docs/protocol.md, and how events change it. No DOM here.
//
// The page starts from the server's states (history), a `snapshot` replaces a run's state, and
// every other event mutates it; the view renders from the same shape either way, so a live run
// and a reloaded one look the same.

import { readJSON } from "./dom.js";

// The status and phase names come from the server (chat.runs.state.vocabulary, embedded as
// #run-vocabulary), so the page and the engine never spell one differently.
const VOCABULARY = readJSON("run-vocabulary");
if (!VOCABULARY) throw new Error("This page has no #run-vocabulary: the run status names come from the server.");

/** Member statuses: MEMBER.WAITING === "waiting", … (chat.fusion.types.MemberStatus). */
export const MEMBER = Object.freeze({ ...VOCABULARY.member_status });
/** Run phases: PHASE.PANEL, PHASE.ANALYSIS, PHASE.FINAL, PHASE.DONE. */
export const PHASE = Object.freeze({ ...VOCABULARY.phase });
/** Run statuses: RUN.RUNNING, RUN.COMPLETE, RUN.CANCELLED, … (chat.models.RunStatus). */
export const RUN = Object.freeze({ ...VOCABULARY.run_status });
/** A member still at work (waiting, thinking, streaming, searching); a run that ends leaves none. */
export const LIVE_MEMBER = new Set(VOCABULARY.live_statuses);
export const TERMINAL_MEMBER = new Set(VOCABULARY.ended_statuses);

function textState(raw) {
  const t = raw || {};
  return {
    content: t.content || "",
    html: t.html === undefined ? null : t.html,
    blocks_html: t.blocks_html || "",
    consumed: Number(t.consumed) || 0,
  };
}

function memberState(raw) {
  return {
    slot: raw.slot,
    model: raw.model || "",
    key: raw.key || raw.model || "",
    label: raw.label || "",
    status: raw.status || MEMBER.WAITING,
    reasoning: raw.reasoning || "",
    error: raw.error || null,
    metrics: raw.metrics || {},
    attempt: raw.attempt || 1,
    tool_calls: (raw.tool_calls || []).map((c) => ({ ...c })),
    sources: (raw.sources || []).map((s) => ({ ...s })),
    notes: [...(raw.notes || [])],
    ...textState(raw),
  };
}

/** A full run state with every field present. */
export function normalizeRun(raw) {
  const members = (raw.members || []).map(memberState).sort((a, b) => a.slot - b.slot);
  return {
    run: raw.run || null,
    client_run_id: raw.client_run_id || null,
    status: raw.status || RUN.RUNNING,
    phase: raw.phase || (raw.status && raw.status !== RUN.RUNNING ? PHASE.DONE : PHASE.PANEL),
    turn: raw.turn || { id: null, index: null, prompt: "" },
    members,
    analyst: raw.analyst || "",
    writer: raw.writer || "",
    analysis: raw.analysis || null,
    label_map: raw.label_map || {},
    models: raw.models || {},
    analysis_error: raw.analysis_error || "",
    final: textState(raw.final),
    usage: raw.usage || {},
    timings: raw.timings || {},
    failed_models: raw.failed_models || [],
    error: raw.error || null,
    sources: raw.sources || [],
    tool_usage: raw.tool_usage || {},
    research_notice: raw.research_notice || null,
    started_at: raw.started_at || null,
    version: raw.version || null, // what made this run a version of its turn (null: the original)
    receipt: raw.receipt || null, // every call of the turn, from the server's ledger (chat.spend.turn_receipt)
    feedback: raw.feedback ? { accepted: Boolean(raw.feedback.accepted), note: String(raw.feedback.note || "") } : null, // the user's accept or reject
    pending: Boolean(raw.pending),
  };
}

/** The state of a run that has just started (`run.started`). */
export function runFromStarted(ev) {
  return normalizeRun({
    run: ev.run,
    client_run_id: ev.client_run_id,
    status: RUN.RUNNING,
    phase: PHASE.PANEL,
    turn: ev.turn,
    members: (ev.members || []).map((m) => ({ ...m, status: MEMBER.WAITING })),
    analyst: ev.analyst,
    writer: ev.writer,
    research_notice: ev.research_notice || null,
    started_at: ev.started_at || new Date().toISOString(),
    version: ev.version || null,
  });
}

/** A placeholder shown the moment the user sends, until `run.started` (or an error) arrives. */
export function pendingRun({ clientRunId, prompt, panel }) {
  return normalizeRun({
    run: null,
    client_run_id: clientRunId,
    status: RUN.RUNNING,
    phase: PHASE.PANEL,
    turn: { id: null, index: null, prompt },
    members: ((panel && panel.members) || []).map((m, slot) => ({ slot, model: m.model, status: MEMBER.WAITING })),
    analyst: panel && panel.analyst ? panel.analyst.model : "",
    writer: panel && panel.writer ? panel.writer.model : "",
    started_at: new Date().toISOString(),
    pending: true,
  });
}

export const GAP = "gap";

/**
 * Apply a text delta ({offset, delta, blocks?, consumed?}) to a stream ({content, blocks_html,
 * consumed, html}). Returns null when nothing changed, GAP when text is missing (the caller
 * resyncs with `subscribe`), or {blocks} — the newly finished blocks' HTML to append.
 */
export function applyTextDelta(stream, ev) {
  if (stream.html !== null && stream.html !== undefined) return null; // finished: its HTML is final
  const have = stream.content.length;
  const offset = Number(ev.offset);
  let delta = String(ev.delta || "");
  const consumed = ev.consumed === undefined ? stream.consumed : Number(ev.consumed);
  if (offset > have) return GAP;
  if (offset < have) {
    // Text we already have (a delta that crossed a snapshot): keep only what is new. Its blocks
    // cover text the snapshot already rendered — unless it finished blocks we never saw, which
    // we cannot split off, so resync then.
    if (consumed > stream.consumed) return GAP;
    const overlap = have - offset;
    if (overlap >= delta.length) return null;
    delta = delta.slice(overlap);
    stream.content += delta;
    return { blocks: [] };
  }
  stream.content += delta;
  const blocks = consumed > stream.consumed ? ev.blocks || [] : [];
  if (blocks.length) {
    stream.blocks_html += blocks.join("");
  }
  if (consumed > stream.consumed) stream.consumed = consumed;
  return { blocks };
}

/** Apply a reasoning delta to a member. Returns the appended text, "" for none, or GAP. */
export function applyReasoningDelta(member, ev) {
  const have = member.reasoning.length;
  const offset = Number(ev.offset);
  if (offset > have) return GAP;
  let delta = String(ev.delta || "");
  if (offset < have) {
    const overlap = have - offset;
    if (overlap >= delta.length) return "";
    delta = delta.slice(overlap);
  }
  member.reasoning += delta;
  return delta;
}

export function resetMember(member) {
  Object.assign(member, {
    status: MEMBER.WAITING,
    content: "",
    html: null,
    blocks_html: "",
    consumed: 0,
    reasoning: "",
    error: null,
    metrics: {},
    tool_calls: [],
    sources: [],
    notes: [],
  });
}

// ------------------------------------------------------------------ web research

/** Add sources ({url, title, …}) whose URL the list does not have yet. */
export function mergeSources(list, sources) {
  const known = new Set(list.map((s) => s.url));
  for (const s of sources || []) {
    if (s && s.url && !known.has(s.url)) {
      known.add(s.url);
      list.push({ ...s });
    }
  }
  return list;
}

/** `panel.tool.started`: a running call in the member's list (a repeated frame changes nothing). */
export function applyToolStarted(member, ev) {
  if (member.tool_calls.some((c) => c.id === ev.call_id)) return;
  member.tool_calls.push({ id: ev.call_id, name: ev.name || "", arguments: ev.arguments || {}, status: "running", ok: null, summary: "", sources: [] });
}

/** `panel.tool.finished`: the call's outcome, and its sources added to the member's. */
export function applyToolFinished(member, ev) {
  let call = member.tool_calls.find((c) => c.id === ev.call_id);
  if (!call) {
    call = { id: ev.call_id, name: ev.name || "", arguments: {} };
    member.tool_calls.push(call);
  }
  Object.assign(call, { status: ev.ok ? "done" : "failed", ok: Boolean(ev.ok), summary: ev.summary || "", sources: ev.sources || [] });
  mergeSources(member.sources, ev.sources);
}

/** A source's URL when it is a web address (http/https), else null: nothing else becomes a link. */
export function safeHttpUrl(url) {
  try {
    const u = new URL(String(url || ""));
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/** How a tool call is shown: {kind: search|page|globe|tool, label} — the query searched or the page fetched. */
export function describeToolCall(call) {
  const args = call.arguments || {};
  if (call.name === "web_search") return { kind: "search", label: String(args.query || args.raw || "search") };
  if (call.name === "web_fetch") {
    const href = safeHttpUrl(args.url);
    if (href) {
      const u = new URL(href);
      return { kind: "page", label: `${u.host}${u.pathname === "/" ? "" : u.pathname}` };
    }
    return { kind: "page", label: String(args.url || args.raw || "fetch") };
  }
  if (String(call.name).startsWith("openrouter:")) return { kind: "globe", label: "Web research by OpenRouter" };
  return { kind: "tool", label: String(call.name || "tool") };
}

export function isRunning(run) {
  return run.status === RUN.RUNNING;
}

/** The slot an analysis model id refers to ("model", or "model#2" for a repeated model). */
export function slotForModel(run, modelId) {
  if (run.models && Object.prototype.hasOwnProperty.call(run.models, modelId)) return run.models[modelId];
  const byKey = run.members.find((m) => m.key === modelId);
  if (byKey) return byKey.slot;
  const byModel = run.members.find((m) => m.model === modelId);
  if (byModel) return byModel.slot;
  // A label the analyst failed to map back ("Response B"): follow the stored label map.
  if (run.label_map && run.label_map[modelId]) return slotForModel({ ...run, label_map: {} }, run.label_map[modelId]);
  return null;
}

/**
 * How a member ended without an answer: "failed" (an error), "stopped" (the user), "skipped" (by
 * Fuse now), "interrupted" (the server went away); null when it answered or is still at work.
 * Only "failed" is a failure.
 */
export function memberEnding(m) {
  if (m.status === MEMBER.FAILED) return "failed";
  if (m.status !== MEMBER.STOPPED) return null;
  const kind = m.error && m.error.kind;
  return kind === "skipped" || kind === "interrupted" ? kind : "stopped";
}

/** What the status pill says. */
export function memberStatusLabel(status) {
  return { [MEMBER.COMPLETE]: "done" }[status] || status || MEMBER.WAITING;
}

export function runStatusSentence(run) {
  switch (run.status) {
    case RUN.COMPLETE:
      return "Done";
    case RUN.CANCELLED:
      return "Stopped";
    case RUN.TIMEOUT:
      return "Timed out";
    case RUN.INTERRUPTED:
      return "Interrupted";
    case RUN.ERROR:
      return "Failed";
    default:
      return "Running";
  }
}
