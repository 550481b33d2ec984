"use strict";
const D = JSON.parse(document.getElementById("dda-data").textContent);
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "html") e.innerHTML = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
};
const fmt = (x, d = 4) => (x === null || x === undefined || Number.isNaN(x)) ? "n/a" : Number(x).toPrecision(d);
const pct = x => (x === null || x === undefined) ? "n/a" : (100 * x).toFixed(1);
const QUANT = 999;

function shade(q) {  // q in [-QUANT, QUANT] -> background colour; sqrt so mid-sized parts stay visible
  if (!q) return "";
  const a = Math.min(1, Math.sqrt(Math.abs(q) / QUANT)) * 0.85;
  return q > 0 ? `rgba(220,38,38,${a.toFixed(3)})` : `rgba(37,99,235,${a.toFixed(3)})`;
}

function segs(parts, cls) {
  const s = el("span");
  for (const [text, changed] of parts) s.append(changed ? el("mark", {class: cls}, text) : text);
  return s;
}

function header() {
  const h = document.getElementById("top");
  h.append(el("h1", {}, D.title));
  const bits = [`${D.queries.length} queries`, `methods: ${D.methods.join(", ")}`,
                D.explained.length ? `token attribution: ${D.explained.join(", ")}` : "no token attribution",
                `top ${D.k} documents each`];
  if (D.truth_known) bits.push("ground truth marked");
  h.append(el("p", {}, bits.join(" · ")));
  h.append(el("p", {class: "legend"}, el("span", {style: "background:rgba(220,38,38,.6)"}, "red"),
    "pushes the document's score up: toward the negative output  ",
    el("span", {style: "background:rgba(37,99,235,.6)"}, "blue"), "against  ·  shading is relative to the " +
    "document's largest contribution; token contributions sum to the method's score"));
}

function truthCell(p) {
  if (!D.truth_known) return el("span", {class: "muted"}, "");
  return p ? el("span", {class: "truth", title: typeof p === "string" ? p : "poisoned"}, "POISONED")
           : el("span", {class: "clean"}, "clean");
}

function summary() {
  const s = document.getElementById("summary");
  if (D.bench) s.append(...benchSection(D.bench));
  s.append(el("h2", {id: "queries"}, "Queries"));
  const t = el("table");
  const hr = el("tr", {}, el("th", {}, "#"), el("th", {}, "query"), el("th", {}, "negative output"));
  for (const m of D.methods) hr.append(el("th", {}, D.truth_known ? `${m}: poisoned in top ${D.k}` : `${m}: top 1`));
  t.append(hr);
  D.queries.forEach((q, i) => {
    const tr = el("tr", {}, el("td", {class: "num"}, i + 1),
      el("td", {}, el("a", {href: `#q-${i}`}, q.id), q.kind ? el("div", {class: "small muted"}, q.kind) : null),
      el("td", {}, segs(q.neg, "chg-neg")));
    for (const m of D.methods) {
      const rows = q.methods[m] || [];
      if (D.truth_known) tr.append(el("td", {class: "num"}, rows.filter(r => D.docs[r.id].p).length));
      else tr.append(el("td", {}, rows.length ? rows[0].id : ""));
    }
    t.append(tr);
  });
  s.append(t);
  s.append(el("h2", {id: "agreement"}, `Method agreement: overlap of top ${D.agreement.k} (mean over queries)`));
  const a = el("table", {class: "grid-agree"});
  a.append(el("tr", {}, el("th", {}, ""), ...D.agreement.methods.map(m => el("th", {}, m))));
  D.agreement.matrix.forEach((row, i) => {
    const tr = el("tr", {}, el("th", {}, D.agreement.methods[i]));
    row.forEach(v => tr.append(el("td", {style: v === null ? "" : `background:rgba(5,150,105,${(0.6 * v).toFixed(2)})`},
                                  v === null ? "" : v.toFixed(2))));
    a.append(tr);
  });
  s.append(a);
  if (D.cost) s.append(el("p", {class: "small muted"}, `Token attribution cost: ${D.cost.seconds} s, ` +
    `${D.cost.rows_recomputed} document rows re-run over checkpoints (${D.cost.documents} documents), ` +
    `${D.cost.query_target_rows} query target rows.`));
}

function benchSection(b) {
  const out = [el("h2", {id: "bench"}, "Benchmark")];
  const f = b.facts;
  out.push(el("p", {class: "small"}, `preset ${f.preset}, seed ${f.seed}, model ${f.model}; ${f.n_train} training ` +
    `documents, ${f.n_poisoned} poisoned; ${f.n_queries} queries (${f.query_mode}); hallucination rate ` +
    `${pct(f.hallucination_rate)}%`));
  const table = (title, rows) => {
    const t = el("table");
    const head = ["method", "AUC %", "± std", "AP %", "distractor AUC %", "pooled AP %", "Recall@10 %"];
    t.append(el("tr", {}, ...head.map(x => el("th", {}, x))));
    for (const r of rows) t.append(el("tr", {}, el("td", {}, r.method),
      ...["auc", "auc_std", "ap", "distractor_auc", "pooled_ap", "recall@10"].map(
        k => el("td", {class: "num"}, r[k] === null || r[k] === undefined ? "n/a" : pct(r[k])))));
    return [el("h3", {}, title), t];
  };
  out.push(...table("Table 1: methods (AUC of poisoned vs clean training documents)", b.table1));
  out.push(...table("Table 2: DDA ablations", b.table2));
  if (b.beta_svg) out.push(el("h3", {}, "β curve (DDA AUC against β, each debias reading)"),
                           el("div", {html: b.beta_svg}));
  if (b.remove_and_retrain) out.push(...removeAndRetrainBlock(b.remove_and_retrain));
  if (b.canary) {
    const c = b.canary;
    const line = s => s.fraction === null ? "no poisoned document in the top " + s.k :
      `${s.on_canary}/${s.poisoned_docs} (query, document) pairs (${pct(s.fraction)}%) land on a whole-word ` +
      `canary token, ${s.distinct_docs_on_canary ?? "?"}/${s.distinct_docs ?? "?"} distinct documents; top tokens: ` +
      s.top_token_texts.map(([t, n]) => `${JSON.stringify(t)}×${n}`).join(", ");
    out.push(el("h3", {}, `Where the largest token contribution falls (poisoned documents in ${c.all.method}'s ` +
                           `top ${c.all.k})`),
             el("p", {class: "small"}, "document or response token: " + line(c.all)),
             el("p", {class: "small"}, "response tokens only: " + line(c.response)));
  }
  return out;
}

function removeAndRetrainBlock(t) {
  // Remove-and-retrain: the table as dda.fix.retrain_table composed it, then each query's margin in each model.
  const table = (cls, header, rows) => {
    const out = el("table", {class: cls});
    out.append(el("tr", {}, ...header.map(x => el("th", {}, x))));
    for (const r of rows) out.append(el("tr", {}, ...r.map((x, i) => el("td", i ? {class: "num"} : {}, x))));
    return out;
  };
  const out = [el("h3", {id: "fix"}, "Remove and retrain"), table("fix", t.header, t.rows)];
  if (t.per_query.length)
    out.push(el("p", {class: "small"}, "Canary margin per query (mean log p(canary) − log p(original) over the " +
      "differing tokens), before and after each removal; below zero the model prefers the original."),
      table("fix-margins", t.per_query_header, t.per_query));
  return out;
}

function tokensBlock(tokens, q, from, to, special, cls) {
  const div = el("div", {class: "toks " + cls});
  for (let i = from; i < to; i++) {
    const t = tokens[i];
    const c = q ? q[i] : 0;
    const cls = special && special.has(i) ? "tk sp" : "tk";  // special tokens (end of turn...) small, still shaded
    const span = el("span", {class: cls, style: c ? `background:${shade(c)}` : ""}, t);
    if (c) span.title = `${(c >= 0 ? "+" : "")}${(c / QUANT).toFixed(3)} × max`;
    div.append(span);
  }
  return div;
}

function docCard(row) {
  const d = D.docs[row.id];
  const card = el("div", {class: "doc", "data-train-id": row.id});
  const head = el("div", {class: "head"}, el("b", {}, `#${row.r}`), el("span", {}, row.id),
                  el("span", {class: "muted"}, `score ${fmt(row.s)}`), truthCell(d.p));
  if (row.sums) head.append(el("span", {class: "small muted"},
      `response ${fmt(row.sums.response, 3)} · prompt ${fmt(row.sums.prompt, 3)}`));
  if (row.side) head.append(el("span", {class: "small muted"},
      `via negative output ${fmt(row.side.negative, 3)} · positive ${fmt(row.side.positive, 3)}`));
  card.append(head);
  if (d.t && row.c) {
    const special = new Set(d.sp || []);
    const peak = row.c.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    card.append(el("div", {}, el("span", {class: "lbl"}, "response"),
                tokensBlock(d.t, row.c, d.rs, d.t.length, special, "response")));
    // the prompt from where the document's own text starts; the instruction template before it on request
    const bs = d.bs || 0;
    const prompt = tokensBlock(d.t, row.c, bs, d.rs, special, "prompt");
    const template = bs ? tokensBlock(d.t, row.c, 0, bs, special, "prompt template") : null;
    const tsum = row.c.slice(0, bs).reduce((a, v) => a + v, 0) * row.cs / QUANT;
    const toggle = el("button", {class: "linkish"}, "expand prompt");
    toggle.addEventListener("click", () => {
      const open = !prompt.classList.contains("open");
      prompt.classList.toggle("open", open);
      if (template) { template.classList.toggle("open", open); template.hidden = !open; }
      toggle.textContent = open ? "collapse prompt" : "expand prompt";
    });
    if (template) template.hidden = true;
    card.append(el("div", {}, el("span", {class: "lbl"}, "prompt"), toggle,
                   bs ? el("span", {class: "small muted"}, `  (instruction template: ${bs} tokens, ` +
                                    `contribution ${fmt(tsum, 3)}, shown when expanded)`) : null),
                ...[template, prompt].filter(Boolean));
    if (!peak) card.append(el("p", {class: "small muted"}, "all contributions are zero"));
  } else if (d.t) {
    card.append(tokensBlock(d.t, null, d.rs, d.t.length, new Set(d.sp || []), "response"));
  } else if (d.text) {
    card.append(el("div", {class: "plain"}, d.text));
  } else {
    card.append(el("p", {class: "small muted"}, "text not embedded (no token attribution for this method)"));
  }
  return card;
}

function queryTokens(qt) {
  if (!qt) return null;
  const box = el("div", {class: "qtok small"}, el("span", {class: "lbl", style: "border:0"},
                 `contrast over (${qt.mode})`));
  for (const [side, cls] of [["negative", ""], ["positive", " p"]]) {
    if (!qt[side]) continue;
    for (const t of qt[side]) if (t.target) box.append(el("span", {class: "target" + cls,
        title: `${side} output, position ${t.position}`}, t.text));
  }
  return box;
}

function shares(rows) {  // mean query-token share of the score over the explained top documents
  const acc = new Map();
  let n = 0;
  for (const r of rows) {
    if (!r.by_token || !r.s) continue;
    n++;
    for (const t of r.by_token) {
      const key = `${t.side}:${t.position}`;
      acc.set(key, (acc.get(key) || 0) + t.contribution / r.s);
    }
  }
  return n ? [...acc.entries()].map(([k, v]) => [k, v / n]) : null;
}

function showQuery(i) {
  const sec = document.getElementById("query");
  sec.replaceChildren();
  const q = D.queries[i];
  if (!q) return;
  sec.append(el("h2", {id: "query-title"}, `Query ${i + 1}/${D.queries.length}: ${q.id}`));
  const nav = el("nav", {class: "qnav"});
  if (i > 0) nav.append(el("a", {href: `#q-${i - 1}`}, "← previous"));
  nav.append(el("a", {href: "#queries"}, "↑ all queries"));
  if (i + 1 < D.queries.length) nav.append(el("a", {href: `#q-${i + 1}`}, "next →"));
  sec.append(nav);
  if (q.prompt) sec.append(el("details", {class: "prompt"}, el("summary", {}, `prompt (${q.prompt.length} characters)`),
                                el("div", {}, q.prompt)));
  sec.append(el("div", {class: "out"}, el("span", {class: "lab"}, "negative"), segs(q.neg, "chg-neg")));
  if (q.pos) sec.append(el("div", {class: "out"}, el("span", {class: "lab"}, "positive"), segs(q.pos, "chg-pos")));
  sec.append(queryTokens(q.query_tokens));
  for (const m of D.methods) {
    const rows = q.methods[m] || [];
    const box = el("div", {class: "method"});
    box.append(el("h3", {id: `m-${i}-${m}`}, `${m}: top ${rows.length}`));
    const sh = shares(rows);
    if (sh && q.query_tokens) {
      const texts = {};
      for (const side of ["negative", "positive"]) for (const t of q.query_tokens[side] || [])
        texts[`${side}:${t.position}`] = t.text;
      box.append(el("p", {class: "small muted"}, "share of the score by query token (mean over these documents): " +
        sh.map(([k, v]) => `${k.split(":")[0]} ${JSON.stringify(texts[k] || k)} ${(100 * v).toFixed(0)}%`).join(", ")));
    }
    for (const r of rows) box.append(docCard(r));
    sec.append(box);
  }
}

function route() {
  const m = location.hash.match(/^#q-(\d+)$/);
  if (m) {
    showQuery(Number(m[1]));
    document.getElementById("query-title")?.scrollIntoView();
  } else if (!document.getElementById("query").childElementCount) {
    showQuery(0);
  }
}

header();
summary();
window.addEventListener("hashchange", route);
route();
