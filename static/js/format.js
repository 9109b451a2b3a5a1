// Formatting helpers shared by the views. No DOM here.

/** "anthropic/claude-opus-4.5" → {provider: "anthropic", name: "claude-opus-4.5"};
 *  "ollama:llama3.1:8b" → {provider: "ollama", name: "llama3.1:8b"}: the part before the first "/" or ":". */
export function splitModel(id) {
  const text = String(id || "");
  const match = /[/:]/.exec(text);
  if (!match) return { provider: "", name: text };
  return { provider: text.slice(0, match.index), name: text.slice(match.index + 1) || text };
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "–";
  const n = Number(ms);
  if (n < 1000) return `${Math.round(n)} ms`;
  if (n < 60000) return `${(n / 1000).toFixed(n < 10000 ? 2 : 1)} s`;
  const m = Math.floor(n / 60000);
  const s = Math.round((n % 60000) / 1000);
  return `${m} min ${String(s).padStart(2, "0")} s`;
}

export function fmtSeconds(seconds) {
  return fmtMs(seconds * 1000);
}

const numberFormat = new Intl.NumberFormat();
export function fmtInt(n) {
  return numberFormat.format(Math.round(Number(n) || 0));
}

/** Total tokens of a usage object ({prompt_tokens, completion_tokens, total_tokens, cost}). */
export function tokensOf(usage) {
  if (!usage) return 0;
  return Number(usage.total_tokens) || (Number(usage.prompt_tokens) || 0) + (Number(usage.completion_tokens) || 0);
}

/** Provider-reported cost; null when the provider did not report one. */
export function fmtCost(cost) {
  if (cost === null || cost === undefined || cost === "") return null;
  const c = Number(cost);
  if (!Number.isFinite(c)) return null;
  // The same rule as chat.spend.usd, the server's one formatter: cents, or four decimals rounded
  // up below a cent (so a small cost never shows as $0.00).
  if (c !== 0 && Math.abs(c) < 0.01) return `$${(Math.ceil(Math.abs(c) * 10000 - 1e-9) / 10000 * Math.sign(c)).toFixed(4)}`;
  return `$${c.toFixed(2)}`;
}

/** A v4 UUID; crypto.randomUUID exists only in secure contexts (https, localhost). */
export function uuid4() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function plural(n, one, many = `${one}s`) {
  return `${fmtInt(n)} ${n === 1 ? one : many}`;
}
