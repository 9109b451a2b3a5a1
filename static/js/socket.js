// A websocket that reconnects with backoff. The page learns of (re)connects through onOpen,
// where it sends `subscribe` and anything that waited for the connection.

const FATAL = {
  4401: "You are signed out. Sign in again to continue.",
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
      this.attempt = 0;
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
      this.onMessage(frame);
    });
    ws.addEventListener("close", (e) => {
      clearInterval(this.pingTimer);
      if (this.ws !== ws) return;
      this.ws = null;
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

  #schedule() {
    if (this.stopped) return;
    this.attempt += 1;
    // 0.5 s, 1 s, 2 s … up to 15 s, with jitter so many tabs do not reconnect in step.
    const base = Math.min(15000, 500 * 2 ** Math.min(this.attempt - 1, 5));
    const delay = base / 2 + Math.random() * base / 2;
    this.onState("closed", null, null, delay);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  #retryNow() {
    if (!this.stopped && this.ws === null) this.connect();
  }
}
