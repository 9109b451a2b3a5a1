// A websocket that reconnects with backoff. The page learns of (re)connects through onOpen,
// where it sends `subscribe` and anything that waited for the connection.
//
// The backoff only resets once a connection has stayed up for STABLE_MS: a server that accepts
// and then drops the socket (a frame it cannot send, say) is retried ever more slowly, and after
// MAX_ATTEMPTS the socket gives up and says so (onState "gave_up"); reconnect() starts over.
// Frames bigger than the server's frame limit arrive as `chunk` frames, joined here.

const STABLE_MS = 10000;
const MAX_ATTEMPTS = 8;
const FATAL = {
  4401: "Your session ended (signed out, or the password changed). Sign in again to continue.",
  4403: "This page's address is not allowed to connect. Check ALLOWED_HOSTS.",
  4404: "This conversation does not exist any more.",
};

export class ReconnectingSocket {
  constructor(path, { onOpen, onMessage, onState }) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = `${scheme}//${location.host}${path}`;
    this.onOpen = onOpen;
    this.onMessage = onMessage;
    this.onState = onState;
    this.attempt = 0;
    this.chunks = null;
    this.ws = null;
    this.stopped = false;
    this.pingTimer = null;
    this.connect();
    window.addEventListener("online", () => this.#retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.#retryNow();
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.onState(this.attempt ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.#schedule();
      return;
    }
    this.ws = ws;
    ws.addEventListener("open", () => {
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => { this.attempt = 0; }, STABLE_MS);
      this.onState("open");
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.send({ type: "ping" }), 25000);
      this.onOpen();
    });
    ws.addEventListener("message", (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (frame && frame.type === "chunk") frame = this.#joinChunk(frame);
      if (frame) this.onMessage(frame);
    });
    ws.addEventListener("close", (e) => {
      clearInterval(this.pingTimer);
      clearTimeout(this.stableTimer);
      if (this.ws !== ws) return;
      this.ws = null;
      this.chunks = null;
      if (FATAL[e.code]) {
        this.stopped = true;
        this.onState("failed", FATAL[e.code], e.code);
        return;
      }
      this.#schedule();
    });
  }

  /** Send a frame; false when not connected (the caller keeps it for onOpen). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Start over after giving up (the user asked to). */
  reconnect() {
    if (this.ws !== null || (this.stopped && !this.gaveUp)) return;
    this.stopped = false;
    this.gaveUp = false;
    this.attempt = 0;
    this.connect();
  }

  #joinChunk(part) {
    // {type: "chunk", id, seq, last, data}: pieces of one frame's JSON text, in order.
    if (part.seq === 0) this.chunks = { id: part.id, next: 0, parts: [] };
    if (!this.chunks || this.chunks.id !== part.id || this.chunks.next !== part.seq) {
      this.chunks = null;
      return { type: "resync" }; // a piece went missing: ask for a fresh snapshot
    }
    this.chunks.parts.push(part.data);
    this.chunks.next += 1;
    if (!part.last) return null;
    const text = this.chunks.parts.join("");
    this.chunks = null;
    try {
      return JSON.parse(text);
    } catch {
      return { type: "resync" };
    }
  }

  #schedule() {
    if (this.stopped) return;
    if (this.attempt >= MAX_ATTEMPTS) {
      this.stopped = true;
      this.gaveUp = true;
      this.onState("gave_up", `Lost the connection to the server ${MAX_ATTEMPTS} times in a row, so this page stopped trying. Runs go on on the server.`);
      return;
    }
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s … up to 15 s, with jitter so many tabs do not reconnect in step.
    const base = Math.min(15000, 500 * 2 ** Math.min(this.attempt - 1, 5));
    const delay = base / 2 + Math.random() * base / 2;
    this.onState("closed", null, null, delay);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  #retryNow() {
    if (this.gaveUp) this.reconnect();
    else if (!this.stopped && this.ws === null) this.connect();
  }
}
