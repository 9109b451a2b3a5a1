// The analyst's comparison, rendered as structure. Every string in it is model output: text only.
import { h } from "./dom.js";
import { splitModel, plural } from "./format.js";
import { slotForModel } from "./state.js";

/** A member tag: coloured like the member's card; hovering or focusing it highlights the card. */
export function memberTag(run, modelId) {
  const slot = slotForModel(run, modelId);
  const member = slot === null ? null : run.members.find((m) => m.slot === slot);
  const name = member ? member.label || splitModel(member.model).name : splitModel(modelId).name || String(modelId);
  const repeated = member && run.members.filter((m) => m.model === member.model).length > 1;
  const text = repeated ? `${name} #${slot + 1}` : name;
  if (slot === null) {
    return h("span", { class: "mtag is-unknown", title: String(modelId) }, text);
  }
  return h(
    "button",
    {
      type: "button",
      class: `mtag hue-${slot % 8}`,
      data: { slot, action: "show-member" },
      title: `${member.model} — show its answer`,
    },
    text,
  );
}

function section(title, count, body, { wide = false } = {}) {
  return h(
    "section",
    { class: `an-section${wide ? " is-wide" : ""}` },
    h("h4", { class: "an-title" }, title, count === null ? null : h("span", { class: "count" }, String(count))),
    body,
  );
}

function asArray(value) {
  return Array.isArray(value) ? value : [];
}

function text(value) {
  return typeof value === "string" ? value : value === null || value === undefined ? "" : JSON.stringify(value);
}

/** Counts for the summary line. */
export function analysisCounts(analysis) {
  const parts = [];
  const n = (key) => asArray(analysis[key]).length;
  if (n("consensus")) parts.push(plural(n("consensus"), "agreement"));
  if (n("contradictions")) parts.push(plural(n("contradictions"), "contradiction"));
  if (n("partial_coverage")) parts.push(`${n("partial_coverage")} partly covered`);
  if (n("unique_insights")) parts.push(plural(n("unique_insights"), "unique insight"));
  if (n("blind_spots")) parts.push(plural(n("blind_spots"), "blind spot"));
  return parts.join(" · ") || "nothing to compare";
}

export function renderAnalysisBody(run) {
  const a = run.analysis || {};
  const sections = [];

  const consensus = asArray(a.consensus);
  if (consensus.length) {
    sections.push(
      section("Consensus", consensus.length, h("ul", { class: "an-list an-check" }, consensus.map((c) => h("li", {}, text(c)))), {
        wide: true,
      }),
    );
  }

  const contradictions = asArray(a.contradictions);
  if (contradictions.length) {
    // Columns: every member that takes a stance somewhere, in slot order.
    const ids = [];
    for (const c of contradictions) {
      for (const s of asArray(c && c.stances)) {
        if (s && s.model !== undefined && !ids.includes(s.model)) ids.push(s.model);
      }
    }
    ids.sort((x, y) => (slotForModel(run, x) ?? 99) - (slotForModel(run, y) ?? 99));
    const table = h(
      "table",
      { class: "an-table" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Topic"), ids.map((id) => h("th", { scope: "col" }, memberTag(run, id))))),
      h(
        "tbody",
        {},
        contradictions.map((c) => {
          const stances = asArray(c && c.stances);
          return h(
            "tr",
            {},
            h("th", { scope: "row" }, text(c && c.topic)),
            ids.map((id) => {
              const s = stances.find((x) => x && x.model === id);
              return s ? h("td", {}, text(s.stance)) : h("td", { class: "is-empty" }, "not addressed");
            }),
          );
        }),
      ),
    );
    sections.push(
      section(
        "Contradictions",
        contradictions.length,
        h("div", { class: "table-scroll", tabindex: "0", role: "region", aria: { label: "Contradictions by member" } }, table),
        { wide: true },
      ),
    );
  }

  const partial = asArray(a.partial_coverage);
  if (partial.length) {
    sections.push(
      section(
        "Partial coverage",
        partial.length,
        h(
          "ul",
          { class: "an-list an-partial" },
          partial.map((p) =>
            h("li", {}, text(p && p.point), h("span", { class: "an-tags" }, asArray(p && p.models).map((m) => memberTag(run, m)))),
          ),
        ),
      ),
    );
  }

  const insights = asArray(a.unique_insights);
  if (insights.length) {
    const groups = new Map();
    for (const u of insights) {
      const id = u && u.model !== undefined ? u.model : "";
      if (!groups.has(id)) groups.set(id, []);
      groups.get(id).push(text(u && u.insight));
    }
    const ordered = [...groups.entries()].sort((x, y) => (slotForModel(run, x[0]) ?? 99) - (slotForModel(run, y[0]) ?? 99));
    sections.push(
      section(
        "Unique insights",
        insights.length,
        h(
          "div",
          {},
          ordered.map(([id, items]) =>
            h("div", { class: "an-insight-group" }, h("div", {}, memberTag(run, id)), h("ul", {}, items.map((i) => h("li", {}, i)))),
          ),
        ),
      ),
    );
  }

  const blind = asArray(a.blind_spots);
  if (blind.length) {
    sections.push(section("Blind spots", blind.length, h("ul", { class: "an-list an-blind" }, blind.map((b) => h("li", {}, text(b))))));
  }

  if (!sections.length) {
    sections.push(h("p", { class: "section-meta" }, "The analyst found nothing to compare."));
  }
  return h("div", { class: "analysis-body" }, sections);
}
