// Evaluation pages. The report: while the evaluation runs, poll its progress.json every 2 s and
// update the progress table in place; when the counts move (at most every 30 s, less often when
// the server takes long to draw the report) or the run ends, fetch the page again and swap its
// sections (run controls, progress, report) for the new ones.
// The new-evaluation form: the preset hints add a line to the configurations, and the file
// field only shows when the tasks come from a file.

const POLL_MS = 2000;
const REPORT_REFRESH_MS = 30000;
const REPORT_BUSY_FACTOR = 20; // a report that takes 3 s to draw is drawn again after a minute
const CENT = 0.01;

/** $0.42, or $0.0031 below a cent (rounded up), like the server's usd filter. */
function usd(amount) {
  const value = Number(amount) || 0;
  if (value !== 0 && Math.abs(value) < CENT) return `$${(Math.ceil(value * 10000) / 10000).toFixed(4)}`;
  return `$${value.toFixed(2)}`;
}

function statusText(status) {
  return { pending: "Not started", running: "Running", stopped: "Stopped", complete: "Complete" }[status] || status;
}

function initDetail(root) {
  const url = root.dataset.progressUrl;
  const announce = document.querySelector("[data-ev-announce]");
  let status = root.dataset.status;
  let runningHere = root.dataset.runningHere === "1";
  let lastDone = null;
  let lastSwap = Date.now();
  let swapMs = 0;
  let timer = null;
  let swapping = false;

  const live = () => status === "running" || runningHere;

  const updateProgress = (data) => {
    const table = root.querySelector("[data-ev-progress]");
    let done = 0;
    for (const c of data.configurations) {
      done += c.done;
      const row = table && [...table.querySelectorAll("tr[data-config]")].find((tr) => tr.dataset.config === c.key);
      if (!row) continue;
      const set = (name, text) => {
        const cell = row.querySelector(`[data-count="${name}"]`);
        if (cell && cell.textContent !== text) cell.textContent = text;
      };
      for (const name of ["answered", "failed", "refused", "pending", "judged", "to_judge"]) set(name, String(c[name]));
      set("running", c.running ? ` (${c.running} running)` : "");
      set("cost_usd", usd(c.cost_usd));
      const bar = row.querySelector('[data-count="bar"]');
      if (bar) {
        bar.max = Math.max(1, c.work);
        bar.value = c.done;
        bar.setAttribute("aria-label", `${c.name}: ${c.done} of ${c.work} steps done`);
        bar.textContent = `${c.done} of ${c.work}`;
      }
    }
    const total = root.querySelector("[data-ev-progress-total]");
    if (total) total.textContent = `${usd(data.cost_usd)} so far`;
    const pill = root.querySelector("[data-ev-status]");
    if (pill && data.status !== status) {
      pill.className = `ev-status ev-status-${data.status}`;
      pill.textContent = statusText(data.status);
    }
    return done;
  };

  // The page's own HTML, fetched again: the sections it renders on the server replace these.
  const swapSections = async () => {
    if (swapping) return;
    swapping = true;
    const started = Date.now();
    try {
      const response = await fetch(window.location.pathname, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const section of root.querySelectorAll("[data-ev-swap]")) {
        const next = fresh.getElementById(section.id);
        if (next) section.replaceWith(document.importNode(next, true));
      }
      lastSwap = Date.now();
      swapMs = lastSwap - started;
    } catch (err) {
      // The network went away for a moment: the next poll tries again.
    } finally {
      swapping = false;
    }
  };

  const poll = async () => {
    timer = null;
    let data;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error(`progress: HTTP ${response.status}`);
      data = await response.json();
    } catch (err) {
      timer = setTimeout(poll, POLL_MS * 2);
      return;
    }
    const wasLive = live();
    const done = updateProgress(data);
    const ended = wasLive && data.status !== "running" && !data.running_here;
    status = data.status;
    runningHere = data.running_here;
    root.dataset.status = status;
    root.dataset.runningHere = runningHere ? "1" : "0";
    if (ended) {
      await swapSections();
      if (announce) {
        announce.textContent =
          status === "complete" ? "The evaluation is complete: the report is up to date." : `The evaluation stopped. ${data.stopped_reason || ""}`;
      }
      return; // nothing moves any more
    }
    const wait = Math.max(REPORT_REFRESH_MS, swapMs * REPORT_BUSY_FACTOR);
    if (lastDone !== null && done !== lastDone && Date.now() - lastSwap >= wait) await swapSections();
    lastDone = done;
    if (live()) timer = setTimeout(poll, POLL_MS);
  };

  if (live()) timer = setTimeout(poll, POLL_MS);
  document.addEventListener("visibilitychange", () => {
    // A hidden tab polls on; coming back after a long while catches up at once.
    if (!document.hidden && live() && timer === null) poll();
  });
}

function initNewForm(form) {
  const configs = form.querySelector('textarea[name="configs"]');
  for (const hint of form.querySelectorAll("[data-config-ref]")) {
    hint.addEventListener("click", () => {
      if (!configs) return;
      const ref = hint.dataset.configRef;
      const lines = configs.value.split("\n").map((l) => l.trim()).filter(Boolean);
      if (!lines.includes(ref)) lines.push(ref);
      configs.value = `${lines.join("\n")}\n`;
      configs.focus();
      configs.setSelectionRange(configs.value.length, configs.value.length);
    });
  }
  const fileField = form.querySelector("[data-source-file]");
  const radios = [...form.querySelectorAll('input[name="source"]')];
  const sync = () => {
    const chosen = radios.find((r) => r.checked);
    if (fileField) fileField.hidden = Boolean(chosen) && chosen.value !== "file";
  };
  for (const radio of radios) radio.addEventListener("change", sync);
  sync();
}

const detail = document.querySelector("[data-ev-detail]");
if (detail) initDetail(detail);
const newForm = document.querySelector("[data-ev-new]");
if (newForm) initNewForm(newForm);
