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

// ------------------------------------------------------------------ the unfinished tail
//
// While a block streams it is not rendered on the server yet; the page shows it through these
// tokens, built into DOM text nodes (view.js), never as HTML. Every token keeps its raw Markdown
// markers (`open`, `close`, `mark`) so the shown text is exactly the streamed text, with the
// markers hidden by CSS: nothing jumps or duplicates when the finished block replaces it.

/**
 * Inline spans of a line: [{kind: "text"|"strong"|"em"|"code", text, open, close}]. Only
 * `**bold**`/`__bold__`, `*em*`/`_em_` and `` `code` ``; an opening `**` or `` ` `` that is not
 * closed yet (the model is still writing it) runs to the end of the line, `close` "".
 */
export function inlineTokens(line) {
  const out = [];
  let plain = "";
  const flush = () => {
    if (plain) out.push({ kind: "text", text: plain, open: "", close: "" });
    plain = "";
  };
  const span = (kind, marker, start, end) => {
    flush();
    const closed = end !== -1;
    out.push({ kind, open: marker, text: line.slice(start, closed ? end : line.length), close: closed ? marker : "" });
    return closed ? end + marker.length : line.length;
  };
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === "`") {
      i = span("code", "`", i + 1, line.indexOf("`", i + 1));
    } else if ((line.startsWith("**", i) || line.startsWith("__", i)) && /\S/.test(line[i + 2] || "")) {
      const marker = line.slice(i, i + 2);
      i = span("strong", marker, i + 2, line.indexOf(marker, i + 2));
    } else if ((c === "*" || c === "_") && /\S/.test(line[i + 1] || "") && !/\w/.test(line[i - 1] || "")) {
      // A single marker is emphasis only once closed ("2 * 3" and snake_case stay text).
      const end = line.indexOf(c, i + 1);
      if (end > i + 1 && /\S/.test(line[end - 1])) i = span("em", c, i + 1, end);
      else {
        plain += c;
        i += 1;
      }
    } else {
      plain += c;
      i += 1;
    }
  }
  flush();
  return out;
}

/**
 * The unfinished tail as blocks: [{kind: "heading"|"list"|"para"|"code", level?, ordered?,
 * start?, lines: [{mark, inline, code?}], before}], where `before` is the raw text between the
 * previous block and this one (newlines), `mark` a line's raw marker ("## ", "- ", "1. ", or
 * its indentation). Consecutive items form one list; a line without a marker continues the
 * block before it. Joining before + mark + inline texts gives back the input exactly.
 */
export function tailBlocks(text) {
  const source = String(text || "");
  const fence = /^[ \t]*(```|~~~)[^\n]*(\n|$)/.exec(source);
  if (fence) {
    // An open code fence: everything after its first line is code, shown as it is.
    return [{ kind: "code", before: "", lines: [{ mark: fence[0], inline: [], code: source.slice(fence[0].length) }] }];
  }
  const blocks = [];
  let last = null; // the block a following line may continue
  let end = 0; // where the text shown so far ends
  let pos = 0;
  for (const line of source.split("\n")) {
    const start = pos;
    pos += line.length + 1;
    if (!line.trim()) {
      last = null; // a blank line ends the block
      continue;
    }
    const before = source.slice(end, start);
    end = start + line.length;
    const heading = /^(\s{0,3}#{1,6}\s+)(.*)$/.exec(line);
    const item = /^(\s{0,3}(?:[-*+]|(\d{1,9})[.)])\s+)(.*)$/.exec(line);
    if (heading) {
      last = null;
      blocks.push({ kind: "heading", level: heading[1].trim().length, before, lines: [{ mark: heading[1], inline: inlineTokens(heading[2]) }] });
    } else if (item) {
      const ordered = Boolean(item[2]);
      const entry = { mark: item[1], inline: inlineTokens(item[3]), item: true };
      if (last && last.kind === "list" && last.ordered === ordered) {
        last.lines.push({ ...entry, before });
      } else {
        last = { kind: "list", ordered, start: ordered ? Number(item[2]) : null, before, lines: [entry] };
        blocks.push(last);
      }
    } else if (last) {
      const indent = /^\s*/.exec(line)[0];
      last.lines.push({ mark: indent, inline: inlineTokens(line.slice(indent.length)), before });
    } else {
      last = { kind: "para", before, lines: [{ mark: "", inline: inlineTokens(line) }] };
      blocks.push(last);
    }
  }
  if (end < source.length) blocks.push({ kind: "para", before: source.slice(end), lines: [] });
  return blocks;
}
