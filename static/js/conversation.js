// The conversation page: history and live runs from one state shape, over one websocket.
//
// The server embeds every turn's state (#turns-data); the socket then sends `snapshot`s and
// events per docs/protocol.md. Both go through upsert()/apply() below into TurnView, so a run
// looks the same live and after a reload.
import { Composer } from "./composer.js";
import { h, readJSON } from "./dom.js";
import { splitModel, uuid4 } from "./format.js";
import { ReconnectingSocket } from "./socket.js";
import {
  applyReasoningDelta,
  applyTextDelta,
  applyToolFinished,
  applyToolStarted,
  GAP,
  isRunning,
  LIVE_MEMBER,
  MEMBER,
  normalizeRun,
  PHASE,
  pendingRun,
  resetMember,
  RUN,
  runFromStarted,
} from "./state.js";
import { TurnView } from "./view.js";

const DEFAULT_TITLE = "New conversation";
const TITLE_CHARS = 60;
const NOT_CONNECTED = "Not connected to the server, so nothing was sent. Your prompt is still here: send it once the connection is back.";

/**
 * A snapshot never takes text away from the screen. A state built from a checkpoint (another
 * process, or a run whose process died) can hold less than the reader already saw: while the
 * run goes on, keep the longer text (live deltas continue it); once it has ended, the stored
 * text is what counts, and what it lacks is kept on screen, marked as lost (`lost`).
 */
function keepShownText(shown, next) {
  if (!shown || !shown.run || shown.run !== next.run) return;
  const pairs = [[shown.final, next.final]];
  for (const m of next.members) {
    const old = shown.members.find((o) => o.slot === m.slot);
    if (old && (old.attempt || 1) === (m.attempt || 1)) pairs.push([old, m]);
  }
  const running = isRunning(next);
  for (const [old, neu] of pairs) {
    const seen = old.content + (old.lost || "");
    if (seen.length <= neu.content.length || !seen.startsWith(neu.content)) continue;
    if (running && (neu.html === null || neu.html === undefined) && !old.lost) {
      neu.content = old.content;
      if (old.consumed > neu.consumed) {
        neu.consumed = old.consumed;
        neu.blocks_html = old.blocks_html;
      }
    } else {
      neu.lost = seen.slice(neu.content.length);
    }
  }
}

/** Follows the newest text only while the reader has not scrolled away from the bottom. */
class Scroller {
  constructor(el, jump) {
    this.el = el;
    this.jump = jump;
    this.follow = true;
    this.frame = 0;
    el.addEventListener("scroll", () => {
      this.follow = this.atBottom();
      this.jump.hidden = this.follow;
    }, { passive: true });
    el.addEventListener("wheel", (e) => {
      if (e.deltaY < 0) this.follow = false;
    }, { passive: true });
    jump.addEventListener("click", () => this.toBottom(true));
  }

  atBottom() {
    return this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 48;
  }

  /** After content changed: keep following, or offer the "Latest" button. */
  after() {
    if (this.follow) {
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          if (this.follow) this.el.scrollTop = this.el.scrollHeight;
        });
      }
    } else {
      this.jump.hidden = this.atBottom();
    }
  }

  toBottom(smooth = false) {
    this.follow = true;
    this.jump.hidden = true;
    this.el.scrollTo({ top: this.el.scrollHeight, behavior: smooth ? "smooth" : "auto" });
  }
}

/** Polite announcements of status changes (not of streaming text). */
class Announcer {
  constructor(el) {
    this.el = el;
    this.queue = [];
    this.timer = 0;
  }

  say(text) {
    this.queue.push(text);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.el.textContent = this.queue.join(" ");
      this.queue = [];
    }, 250);
  }
}

/** The versions (runs) of a turn's state from the server, oldest first; [] when it has none. */
function versionsOf(raw) {
  return Array.isArray(raw.versions) ? raw.versions.map(normalizeRun) : [];
}

/** *versions* with *run* in it: replacing the same run (or its pending placeholder), else added last. */
function withVersion(versions, run) {
  const list = [...versions];
  const i = list.findIndex((v) => (run.run && v.run === run.run) || (!v.run && v.client_run_id === run.client_run_id));
  if (i >= 0) list[i] = run;
  else list.push(run);
  return list;
}

class ConversationPage {
  constructor(config) {
    this.config = config;
    this.turnsEl = document.querySelector("[data-turns]");
    this.emptyEl = document.querySelector("[data-empty]");
    this.connEl = document.querySelector("[data-conn]");
    this.titleEl = document.querySelector("[data-conv-title]");
    this.scroller = new Scroller(document.querySelector("[data-thread]"), document.querySelector("[data-jump]"));
    this.announcer = new Announcer(document.querySelector("[data-announcer]"));
    this.entries = new Set(); // {run, view}
    this.byRun = new Map(); // server run id → entry
    this.byTurn = new Map(); // turn id → entry
    this.byClient = new Map(); // client run id → entry
    this.byRoot = new WeakMap(); // turn element → entry
    this.pending = new Map(); // client run id → start frame not yet acknowledged by run.started
    this.resyncAt = 0;
    this.refetching = false;
    this.connected = false; // the socket is open
    this.everOpen = false; // it was open once: a close after that is the server going away
    this.banner = this.#buildBanner();

    this.composer = new Composer(document.querySelector("[data-composer]"), {
      onSend: (msg) => this.send(msg),
      onStop: () => this.stopAll(),
    });

    for (const raw of readJSON("turns-data") || []) this.upsert(normalizeRun(raw), versionsOf(raw));
    this.scroller.toBottom();

    this.socket = new ReconnectingSocket(config.ws_path, {
      onOpen: () => this.onOpen(),
      onMessage: (frame) => this.onFrame(frame),
      onState: (state, message) => this.onSocketState(state, message),
    });

    const pendingStart = readJSON("pending-start");
    if (pendingStart && pendingStart.run_id && pendingStart.prompt) {
      // The home page's first prompt: the server made the conversation and the run id; send
      // `start` once connected. A repeated start with the same id only attaches.
      this.start({ clientRunId: pendingStart.run_id, prompt: pendingStart.prompt, panel: null, follow_up_mode: null });
    }

    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !e.defaultPrevented && this.runningEntries().length) {
        e.preventDefault();
        this.stopAll();
      }
    });
    setInterval(() => {
      // While disconnected the page does not know what runs do: their timers stay frozen.
      if (!this.connected) return;
      for (const entry of this.runningEntries()) entry.view.tick();
    }, 1000);
    this.syncComposer();
  }

  // ------------------------------------------------------------------ bookkeeping

  runningEntries() {
    return [...this.entries].filter((e) => isRunning(e.run));
  }

  find(run) {
    return (
      (run.run && this.byRun.get(run.run)) ||
      (run.turn && run.turn.id !== null && this.byTurn.get(run.turn.id)) ||
      (run.client_run_id && this.byClient.get(run.client_run_id)) ||
      null
    );
  }

  /**
   * Show a run's state: a new turn, or the new state of the turn it belongs to. A run of a turn
   * is one of its versions: a new one is added (and shown), a known one replaced. *versions*:
   * the turn's whole list from the server (oldest first), when the state came with it.
   */
  upsert(run, versions = null) {
    let entry = this.find(run);
    if (entry) {
      entry.versions = withVersion(versions || entry.versions, run);
      entry.run = run;
      entry.view.setVersions(entry.versions, run);
    } else {
      entry = { run, versions: withVersion(versions || [], run), view: null };
      entry.view = new TurnView(run, { onAction: (action, r, extra) => this.onAction(action, r, extra) });
      entry.view.setVersions(entry.versions, run);
      this.entries.add(entry);
      this.byRoot.set(entry.view.root, entry);
      this.#insert(entry);
    }
    for (const v of entry.versions) if (v.run) this.byRun.set(v.run, entry);
    if (run.turn && run.turn.id !== null && run.turn.id !== undefined) this.byTurn.set(run.turn.id, entry);
    if (run.client_run_id) this.byClient.set(run.client_run_id, entry);
    this.emptyEl.hidden = this.entries.size > 0;
    return entry;
  }

  #insert(entry) {
    // Turns in index order; a turn still waiting for its index (just sent) goes last.
    const index = entry.run.turn.index;
    if (index !== null && index !== undefined) {
      for (const el of this.turnsEl.children) {
        const other = this.byRoot.get(el);
        const j = other && other.run.turn.index;
        if (j === null || j === undefined || j > index) {
          this.turnsEl.insertBefore(entry.view.root, el);
          return;
        }
      }
    }
    this.turnsEl.append(entry.view.root);
  }

  remove(entry) {
    entry.view.root.remove();
    this.entries.delete(entry);
    for (const map of [this.byRun, this.byTurn, this.byClient]) {
      for (const [k, v] of map) if (v === entry) map.delete(k);
    }
    this.emptyEl.hidden = this.entries.size > 0;
  }

  /** The current entry of a run event, or null (unknown → resync; superseded → ignore). */
  entryFor(ev) {
    const entry = this.byRun.get(ev.run);
    if (!entry) {
      this.resync();
      return null;
    }
    return entry.run.run === ev.run ? entry : null;
  }

  syncComposer() {
    const running = this.runningEntries().length > 0;
    this.composer.setRunning(running);
    // "A run is going…" is stale once no run is (it ended, or was interrupted while away).
    if (!running) this.composer.clearNotices("busy");
  }

  // ------------------------------------------------------------------ socket

  onOpen() {
    this.socket.send({ type: "subscribe" });
    for (const frame of this.pending.values()) this.socket.send(frame);
  }

  onSocketState(state, message) {
    this.#connection(state, message);
    const text = { connecting: "Connecting…", open: "Live", reconnecting: "Reconnecting…", closed: "Reconnecting…", failed: "Disconnected", gave_up: "Disconnected — reconnect" }[state];
    this.connEl.dataset.state = state;
    this.connEl.querySelector(".conn-text").textContent = text || state;
    this.connEl.title = state === "open" ? "Connected: answers stream live" : message || "Not connected; retrying";
    this.#offerReconnect(state === "gave_up");
    if ((state === "failed" || state === "gave_up") && message) {
      this.composer.notice(message);
      this.announcer.say(message);
    }
  }

  #buildBanner() {
    const text = h("p", { class: "conn-banner-text" });
    const button = h("button", { type: "button", class: "btn btn-small", hidden: true }, "Reconnect");
    button.addEventListener("click", () => this.socket.reconnect());
    const banner = h("div", { class: "conn-banner", role: "alert", hidden: true, data: { connBanner: "" } }, text, button);
    banner.text = text;
    banner.button = button;
    const thread = document.querySelector("[data-thread]");
    thread.prepend(banner);
    return banner;
  }

  /**
   * The server going away is visible: a banner, statuses and timers frozen (body.is-offline),
   * sends refused; on reconnect the notices that described the lost connection go away.
   */
  #connection(state, message) {
    const connected = state === "open";
    const was = this.connected;
    this.connected = connected;
    this.composer.setConnected(connected);
    document.body.classList.toggle("is-offline", !connected && (this.everOpen || state === "failed" || state === "gave_up"));
    if (connected) {
      this.banner.hidden = true;
      if (!was && this.everOpen) {
        this.composer.clearNotices("connection");
        this.composer.clearNotices("busy");
        this.announcer.say("Reconnected.");
      }
      this.everOpen = true;
      return;
    }
    if (!this.everOpen && state !== "failed" && state !== "gave_up") return; // the first connect
    const running = this.runningEntries().length > 0;
    const sentence =
      state === "failed" || state === "gave_up"
        ? message || "Disconnected from the server."
        : `Lost the connection to the server; reconnecting…${running ? " What you see is paused until it is back; the run goes on on the server." : ""}`;
    this.banner.text.textContent = sentence;
    this.banner.button.hidden = state !== "gave_up";
    if (this.banner.hidden) this.announcer.say("Disconnected from the server.");
    this.banner.hidden = false;
  }

  #offerReconnect(on) {
    // After the socket gave up, the status pill becomes a button that starts over.
    if (on) {
      this.connEl.setAttribute("role", "button");
      this.connEl.tabIndex = 0;
      if (!this.reconnectHandler) {
        this.reconnectHandler = (e) => {
          if (e.type === "keydown" && e.key !== "Enter" && e.key !== " ") return;
          e.preventDefault();
          this.socket.reconnect();
        };
        this.connEl.addEventListener("click", this.reconnectHandler);
        this.connEl.addEventListener("keydown", this.reconnectHandler);
      }
    } else if (this.reconnectHandler) {
      this.connEl.removeEventListener("click", this.reconnectHandler);
      this.connEl.removeEventListener("keydown", this.reconnectHandler);
      this.reconnectHandler = null;
      this.connEl.setAttribute("role", "status");
      this.connEl.removeAttribute("tabindex");
    }
  }

  resync() {
    if (Date.now() - this.resyncAt < 2000) return;
    this.resyncAt = Date.now();
    this.socket.send({ type: "subscribe" });
  }

  onFrame(frame) {
    if (frame.type === "batch") for (const ev of frame.events || []) this.apply(ev);
    else this.apply(frame);
    this.scroller.after();
    this.syncComposer();
  }

  apply(ev) {
    switch (ev.type) {
      case "pong":
        return;
      case "resync": // a frame that came in pieces was lost: start again from a snapshot
        this.resyncAt = 0;
        this.resync();
        return;
      case "error":
        this.onError(ev);
        return;
      case "snapshot":
        this.onSnapshot(ev);
        return;
      case "run.started":
        this.onStarted(ev);
        return;
      default:
        this.onRunEvent(ev);
    }
  }

  onSnapshot(ev) {
    this.resyncAt = 0;
    const seen = new Set();
    for (const raw of ev.runs || []) {
      const run = normalizeRun(raw);
      seen.add(run.run);
      this.pending.delete(run.client_run_id);
      const entry = this.find(run);
      if (entry) keepShownText(entry.run, run);
      this.upsert(run);
    }
    // Runs shown as running that the server no longer runs ended while we were disconnected.
    if (this.runningEntries().some((e) => e.run.run && !seen.has(e.run.run))) this.refetchState();
  }

  async refetchState() {
    if (this.refetching) return;
    this.refetching = true;
    try {
      const response = await fetch(this.config.state_url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const data = await response.json();
      for (const raw of data.turns || []) {
        const run = normalizeRun(raw);
        if (isRunning(run)) continue; // live events and snapshots own running runs
        const entry = this.find(run);
        if (entry) keepShownText(entry.run, run);
        if (!entry || isRunning(entry.run) || entry.run.run !== run.run) this.upsert(run, versionsOf(raw));
      }
      this.syncComposer();
    } catch {
      // Offline again: the next reconnect tries once more.
    } finally {
      this.refetching = false;
    }
  }

  onStarted(ev) {
    this.pending.delete(ev.client_run_id);
    const entry = this.upsert(runFromStarted(ev));
    if (ev.turn && ev.turn.index === 0) this.#titleFromPrompt(ev.turn.prompt);
    this.announcer.say(ev.replaces ? "Run restarted." : `Started: ${entry.run.members.length} models answering.`);
  }

  onError(ev) {
    const id = ev.run_id;
    if (id && this.pending.has(id)) {
      // The start was refused: take the turn away again and give the prompt back.
      this.pending.delete(id);
      const entry = this.byClient.get(id);
      if (entry && entry.run.pending) {
        this.remove(entry);
        if (!this.composer.prompt.trim()) this.composer.prompt = entry.run.turn.prompt;
      }
    }
    // A refused "Rewrite with" is said next to that field, not at the composer.
    const target = id ? this.byClient.get(id) : null;
    if (target && !target.run.pending && target.view.regenWaiting) {
      target.view.regenFailed(ev.message || "The server could not rewrite the answer.");
      this.announcer.say(ev.message || "Error.");
      return;
    }
    const kind = ["busy", "limit", "rate_limited"].includes(ev.code) ? "warn" : "error";
    this.composer.notice(ev.message || "The server could not do that.", kind, { tag: ev.code === "busy" ? "busy" : null });
    this.announcer.say(ev.message || "Error.");
    // Buttons were disabled while waiting for an answer: draw them again.
    for (const entry of this.entries) entry.view.render();
  }

  onRunEvent(ev) {
    if (!ev.run) return;
    const entry = this.entryFor(ev);
    if (!entry) return;
    const run = entry.run;
    const view = entry.view;
    const member = ev.slot === undefined ? null : run.members.find((m) => m.slot === ev.slot);
    const name = (m) => (m ? m.label || splitModel(m.model).name : "A member");

    switch (ev.type) {
      case "panel.added": {
        if (!member) return;
        if ((ev.attempt || 1) > 1) resetMember(member);
        member.attempt = ev.attempt || 1;
        if (!LIVE_MEMBER.has(member.status) && (ev.attempt || 1) > 1) member.status = MEMBER.WAITING;
        view.memberBody(member.slot);
        view.memberChrome(member.slot);
        view.controls();
        if ((ev.attempt || 1) > 1) this.announcer.say(`${name(member)}: retrying.`);
        return;
      }
      case "panel.delta": {
        if (!member) return;
        const result = applyTextDelta(member, ev);
        if (result === GAP) return this.resync();
        if (!result) return;
        if (member.status === MEMBER.WAITING || member.status === MEMBER.THINKING) {
          member.status = MEMBER.STREAMING;
          view.memberChrome(member.slot);
          view.controls();
        }
        view.memberText(member.slot, result.blocks);
        return;
      }
      case "panel.reasoning.delta": {
        if (!member) return;
        const text = applyReasoningDelta(member, ev);
        if (text === GAP) return this.resync();
        if (member.status === MEMBER.WAITING) {
          member.status = MEMBER.THINKING;
          view.memberChrome(member.slot);
        }
        view.memberReasoning(member.slot, text);
        return;
      }
      case "panel.tool.started": {
        if (!member) return;
        applyToolStarted(member, ev);
        member.status = MEMBER.SEARCHING;
        view.memberResearch(member.slot);
        view.memberBody(member.slot);
        view.memberChrome(member.slot);
        if (member.tool_calls.length === 1) this.announcer.say(`${name(member)} is researching the web.`);
        return;
      }
      case "panel.tool.finished": {
        if (!member) return;
        applyToolFinished(member, ev);
        if (member.status === MEMBER.SEARCHING && !member.tool_calls.some((c) => c.status === "running")) {
          member.status = ev.status && ev.status !== MEMBER.SEARCHING ? ev.status : member.content ? MEMBER.STREAMING : MEMBER.WAITING;
        }
        view.memberResearch(member.slot);
        view.memberBody(member.slot);
        view.memberChrome(member.slot);
        return;
      }
      case "panel.note": {
        if (!member) return;
        if (ev.message && !member.notes.includes(ev.message)) member.notes.push(ev.message);
        view.memberResearch(member.slot);
        this.announcer.say(`${name(member)}: ${ev.message || ""}`);
        return;
      }
      case "panel.completed": {
        if (!member) return;
        member.status = MEMBER.COMPLETE;
        member.html = ev.html || "";
        member.metrics = ev.metrics || member.metrics;
        member.error = null;
        if (Array.isArray(ev.sources)) member.sources = ev.sources.map((x) => ({ ...x }));
        view.memberResearch(member.slot);
        view.memberBody(member.slot);
        view.memberChrome(member.slot);
        view.controls();
        this.announcer.say(`${name(member)} answered.`);
        return;
      }
      case "panel.failed": {
        if (!member) return;
        member.status = ev.status === MEMBER.STOPPED ? MEMBER.STOPPED : MEMBER.FAILED;
        member.error = ev.error || null;
        member.metrics = ev.metrics || member.metrics;
        if (typeof ev.html === "string") member.html = ev.html;
        if (Array.isArray(ev.sources)) member.sources = ev.sources.map((x) => ({ ...x }));
        for (const c of member.tool_calls) if (c.status === "running") c.status = "failed";
        view.memberResearch(member.slot);
        view.memberBody(member.slot);
        view.memberChrome(member.slot);
        view.controls();
        this.announcer.say(member.status === MEMBER.STOPPED ? `${name(member)} stopped.` : `${name(member)} failed: ${(member.error && member.error.message) || "error"}`);
        return;
      }
      case "analysis.in_progress":
        run.phase = PHASE.ANALYSIS;
        if (ev.analyst_model) run.analyst = ev.analyst_model;
        view.analysis();
        view.controls();
        this.announcer.say("The analyst is comparing the answers.");
        return;
      case "analysis.completed":
        run.analysis = ev.analysis || {};
        run.label_map = ev.label_map || {};
        if (ev.models) run.models = ev.models;
        if (ev.analyst_model) run.analyst = ev.analyst_model;
        run.analysis_error = "";
        view.analysis();
        this.announcer.say("Analysis ready.");
        return;
      case "analysis.degraded":
        run.analysis = null;
        run.analysis_error = ev.reason || "The analyst did not return a usable comparison.";
        view.analysis();
        this.announcer.say(`No analysis: ${run.analysis_error}`);
        return;
      case "final.started":
        run.phase = PHASE.FINAL;
        if (ev.writer_model) run.writer = ev.writer_model;
        run.final = { content: "", html: null, blocks_html: "", consumed: 0 };
        view.finalBody();
        view.controls();
        this.announcer.say("Writing the fused answer.");
        return;
      case "final.delta": {
        const result = applyTextDelta(run.final, ev);
        if (result === GAP) return this.resync();
        if (result) view.finalText(result.blocks);
        return;
      }
      case "completed":
      case "failed": {
        run.status = ev.type === "completed" ? RUN.COMPLETE : ev.status || RUN.ERROR;
        run.phase = PHASE.DONE;
        if (typeof ev.html === "string" && (ev.html || !run.final.content)) run.final.html = ev.html;
        if (ev.usage) run.usage = ev.usage;
        if (ev.timings) run.timings = ev.timings;
        else if (!run.timings || run.timings.total === undefined) {
          const t = Date.parse(run.started_at);
          if (!Number.isNaN(t)) run.timings = { ...(run.timings || {}), total: Date.now() - t };
        }
        if (ev.failed_models) run.failed_models = ev.failed_models;
        if (Array.isArray(ev.sources)) run.sources = ev.sources;
        if (ev.tool_usage) run.tool_usage = ev.tool_usage;
        if (ev.receipt) run.receipt = ev.receipt; // every call of the turn, from the ledger
        if (ev.type === "failed") run.error = { kind: ev.kind || "error", message: ev.message || "" };
        for (const m of run.members) if (LIVE_MEMBER.has(m.status)) m.status = MEMBER.STOPPED;
        view.render();
        this.announcer.say(ev.type === "completed" ? "Fused answer ready." : `Run ${run.status === RUN.CANCELLED ? "stopped" : "failed"}. ${ev.message || ""}`);
        if (ev.type === "completed") this.#showFused(entry);
        return;
      }
      default:
        return;
    }
  }

  // ------------------------------------------------------------------ user actions

  send({ prompt, panel, follow_up_mode, preset = null }) {
    if (!this.connected) {
      this.composer.notice(NOT_CONNECTED, "warn", { tag: "connection" });
      return false;
    }
    if (this.runningEntries().length) {
      this.composer.notice("A run is going in this conversation. Stop it (Esc) or wait for it to finish.", "warn", { tag: "busy" });
      return false;
    }
    this.start({ clientRunId: uuid4(), prompt, panel, follow_up_mode, preset });
    return true;
  }

  start({ clientRunId, prompt, panel, follow_up_mode, preset = null }) {
    const frame = { type: "start", run_id: clientRunId, prompt, ...this.#shownRuns() };
    // A chosen preset goes by id (the server runs its whole config); `panel` only shows it here.
    if (preset) frame.preset = /^\d+$/.test(preset) ? Number(preset) : preset;
    else if (panel) frame.panel = panel;
    if (follow_up_mode) frame.follow_up_mode = follow_up_mode;
    this.pending.set(clientRunId, frame);
    const shown = panel || this.composer.readPanel().panel || null;
    this.upsert(pendingRun({ clientRunId, prompt, panel: shown }));
    this.composer.clearNotices();
    this.scroller.toBottom();
    this.syncComposer();
    this.socket.send(frame); // when not connected, onOpen sends it
  }

  /** Follow-ups and re-runs build on the versions on screen now (docs/protocol.md, shown_runs). */
  #shownRuns() {
    const ids = [...this.entries].filter((e) => e.versions.length > 1 && e.run.run && !isRunning(e.run)).map((e) => e.run.run);
    return ids.length ? { shown_runs: ids } : {};
  }

  stopAll() {
    let any = false;
    for (const entry of this.runningEntries()) {
      if (entry.run.pending || !entry.run.run) continue;
      this.socket.send({ type: "stop", run_id: entry.run.client_run_id });
      any = true;
    }
    if (any) this.announcer.say("Stopping.");
  }

  onAction(action, run, extra) {
    const frames = {
      stop: () => ({ type: "stop", run_id: run.client_run_id }),
      fuse_now: () => ({ type: "fuse_now", run_id: run.client_run_id }),
      stop_member: () => ({ type: "stop_member", run_id: run.client_run_id, slot: extra.slot }),
      retry_member: () => ({ type: "retry_member", run_id: run.client_run_id, slot: extra.slot, ...this.#shownRuns() }),
      regenerate: () => ({ type: "regenerate", run_id: run.client_run_id, writer: extra.writer, ...this.#shownRuns() }),
      rerun: () => ({ type: "rerun", run_id: run.client_run_id, mode: extra.mode, ...this.#shownRuns() }),
    };
    if (action === "version") {
      const entry = this.find(run);
      if (!entry) return;
      entry.run = run;
      entry.view.setVersions(entry.versions, run);
      this.announcer.say(`Version ${entry.versions.indexOf(run) + 1} of ${entry.versions.length}.`);
      return;
    }
    if (action === "copied") {
      this.announcer.say("Copied the fused answer.");
      return;
    }
    if (action === "feedback") return this.#saveFeedback(run, extra);
    const make = frames[action];
    if (!make) return;
    if (!this.socket.send(make())) {
      this.composer.notice("Not connected to the server right now; trying again. Retry in a moment.", "warn", { tag: "connection" });
      const entry = this.find(run);
      if (entry) entry.view.render();
    }
  }

  /** Accept or reject a run's fused answer (chat/views/feedback.py): {ok, status, data}. */
  async #saveFeedback(run, { accepted, note }) {
    // Next to state.json: /c/<id>/runs/<run>/feedback.
    const url = new URL(`runs/${encodeURIComponent(run.run)}/feedback`, new URL(this.config.state_url, window.location.href));
    const token = document.querySelector("[data-composer] input[name=csrfmiddlewaretoken]");
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": token ? token.value : "" },
      body: JSON.stringify({ accepted, note }),
    });
    // The controls' own status line (role=status) says what happened.
    const data = await response.json().catch(() => ({}));
    return { ok: response.ok, status: response.status, data: data && typeof data === "object" ? data : {} };
  }

  /** On a phone the stacked cards push the fused answer off screen: bring it into view. */
  #showFused(entry) {
    if (!matchMedia("(max-width: 640px)").matches || !entry.view.fusedEl) return;
    this.scroller.follow = false; // the reader is taken to the answer, not to the bottom
    requestAnimationFrame(() => entry.view.fusedEl.scrollIntoView({ block: "start", behavior: "auto" }));
  }

    #titleFromPrompt(prompt) {
    const current = this.titleEl.textContent.trim();
    if (current !== DEFAULT_TITLE) return;
    const line = String(prompt).split(/\s+/).filter(Boolean).join(" ");
    // As the server stores it (chat.runs.services.title_from_prompt): cut at a word, no "…".
    const cut = line.slice(0, TITLE_CHARS);
    const atWord = line.length > TITLE_CHARS && line[TITLE_CHARS] !== " " && cut.includes(" ") ? cut.slice(0, cut.lastIndexOf(" ")) : cut;
    const title = atWord.replace(/[\s,;:.\-–—]+$/, "") || cut;
    this.titleEl.textContent = title;
    document.title = `${title} · Fusion chatroom`;
    const link = document.querySelector("[data-current-title]");
    if (link) {
      link.textContent = title;
      const item = link.closest("[data-conv-item]");
      if (item) item.dataset.title = title.toLowerCase();
    }
  }
}

const config = readJSON("page-config");
if (config) new ConversationPage(config);
