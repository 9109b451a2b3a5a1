// A tiny element builder. Text always goes in as text; the only HTML this app inserts is the
// server's sanitised Markdown rendering, through setHTML/appendHTML below.

/**
 * h("div", {class: "x", data: {slot: 1}, text: "hi", hidden: true, aria: {label: "…"}}, child, …)
 * Children: nodes, strings (as text), null/false (skipped), arrays (flattened).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (key === "aria") for (const [k, v] of Object.entries(value)) el.setAttribute(`aria-${k}`, String(v));
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.append(child);
    else el.append(document.createTextNode(String(child)));
  }
}

/** Server-rendered, sanitised HTML only (members[].html, blocks, final.html). */
export function setHTML(el, trustedServerHtml) {
  el.innerHTML = trustedServerHtml || "";
}

export function appendHTML(el, trustedServerHtml) {
  if (trustedServerHtml) el.insertAdjacentHTML("beforeend", trustedServerHtml);
}

export function readJSON(id) {
  const node = document.getElementById(id);
  if (!node) return null;
  try {
    return JSON.parse(node.textContent);
  } catch {
    return null;
  }
}

/** A small inline SVG icon from path data (no innerHTML). */
export function icon(d, size = 14) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 20 20");
  svg.setAttribute("width", String(size));
  svg.setAttribute("height", String(size));
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", "currentColor");
  path.setAttribute("stroke-width", "1.9");
  path.setAttribute("stroke-linecap", "round");
  path.setAttribute("stroke-linejoin", "round");
  svg.append(path);
  return svg;
}

export const ICONS = {
  stop: "M6 6h8v8H6z",
  retry: "M15.5 8A6 6 0 1 0 16 12M16 4v4h-4",
  fuse: "M4 5c5 0 5 5 10 5M4 15c5 0 5-5 10-5M4 10h10M14 10h2",
  expand: "M6 8l4 4 4-4",
  collapse: "M6 12l4-4 4 4",
  copy: "M7 7h9v9H7zM4 13V4h9",
  spark: "M10 3v4M10 13v4M3 10h4M13 10h4",
};
