"""`dda show RUN_DIR --out FILE.html`: one self-contained page a person reads in a browser.

Works on a `dda attribute` output (ranking.json, optionally explain/*.json), on a workdir holding one
(WORKDIR/attribution) and on a `dda bench` run (metrics.json, queries.jsonl, train.jsonl, attribution/). The page
has no external reference at all: styles, script and data are inline, fonts are the system's, the beta curve is
an inline SVG. Only the top-k documents of each query and method are embedded, each document's token texts once
(shared by every query and method that lists it), and contributions as integers relative to the document's
largest one, so a page for 50 queries x 20 documents stays a few MB (see `page_size_estimate`).

Reading the page: tokens are shaded by their contribution to the document's score (red: toward the negative
output, i.e. the reason the document ranks high; blue: against), relative to the document's largest |contribution|.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .bench.evidence import top_token_stats
from .explain import read_explanations
from .io import read_json, write_text

QUANT = 999  # contributions are stored as round(QUANT * c / max|c|) per document
SNIPPET_CHARS = 700  # text shown for a document that has no token attribution


class RunDirError(ValueError):
    """The directory is not something `dda show` can read; the message says what was expected."""


# ------------------------------------------------------------------------------------------- reading runs


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise RunDirError(f"{path}, line {lineno}: invalid JSON ({err.msg})") from None
    return rows


def locate(run_dir: str | Path) -> tuple[str, Path, Path]:
    """(kind, run dir, attribution dir): kind 'bench' (metrics.json) or 'attribute' (ranking.json)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"{run}: not a directory")
    if (run / "metrics.json").exists():
        attr = run / "attribution"
        if not (attr / "ranking.json").exists():
            raise RunDirError(f"{attr / 'ranking.json'}: missing (is {run} a finished `dda bench` run?)")
        return "bench", run, attr
    if (run / "ranking.json").exists():
        return "attribute", run, run
    if (run / "attribution" / "ranking.json").exists():
        return "attribute", run, run / "attribution"
    raise RunDirError(
        f"{run}: no ranking.json, attribution/ranking.json or metrics.json; expected the output "
        f"of `dda attribute` (or its workdir) or of `dda bench`"
    )


def _word_diff(a: str, b: str) -> tuple[list[list[Any]], list[list[Any]]]:
    """Segments [text, changed] of a and b, changed = 1 for the words outside difflib's equal runs."""
    ta, tb = re.findall(r"\S+|\s+", a), re.findall(r"\S+|\s+", b or "")
    sa, sb = [], []
    for tag, a0, a1, b0, b1 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        changed = int(tag != "equal")
        if a1 > a0:
            sa.append(["".join(ta[a0:a1]), changed])
        if b1 > b0:
            sb.append(["".join(tb[b0:b1]), changed])
    return sa, sb


def _quantize(values: Sequence[float]) -> tuple[list[int], float]:
    peak = max((abs(v) for v in values), default=0.0)
    if peak == 0:
        return [0] * len(values), 0.0
    return [round(QUANT * v / peak) for v in values], peak


def _agreement(top: dict[str, list[list[dict[str, Any]]]], k: int) -> dict[str, Any]:
    """Mean over queries of |top-k(A) & top-k(B)| / k for every pair of methods."""
    methods = list(top)
    sets = {m: [{r["train_id"] for r in rows[:k]} for rows in top[m]] for m in methods}
    matrix = []
    for a in methods:
        row = []
        for b in methods:
            pairs = list(zip(sets[a], sets[b], strict=True))
            row.append(sum(len(x & y) for x, y in pairs) / (k * len(pairs)) if pairs and k else None)
        matrix.append(row)
    return {"k": k, "methods": methods, "matrix": matrix}


def _train_texts(kind: str, run: Path, attr: Path) -> dict[str, dict[str, Any]]:
    """id -> {document, summary, poisoned} from the run's training data, where it can be found."""
    candidates = (
        [run / "train.jsonl"] if kind == "bench" else [attr.parent / "data" / "train.jsonl", attr / "train.jsonl"]
    )
    for path in candidates:
        if path.exists():
            return {str(r.get("id")): r for r in _read_jsonl(path)}
    return {}


def collect(run_dir: str | Path, top_k: int | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict (embedded in the page as data)."""
    kind, run, attr = locate(run_dir)
    ranking = read_json(attr / "ranking.json")
    for key in ("train_ids", "queries", "top"):
        if key not in ranking:
            raise RunDirError(f"{attr / 'ranking.json'}: missing field '{key}'")
    explanations = {e["query"]["id"]: e for e in read_explanations(attr)}
    train = _train_texts(kind, run, attr)
    bench_queries = (
        {r["id"]: r for r in _read_jsonl(run / "queries.jsonl")}
        if kind == "bench" and (run / "queries.jsonl").exists()
        else {}
    )
    methods = list(ranking["top"])
    # the explained k when there are explanations (every shown document of those methods is shaded), else all stored
    explained_k = max((len(m["docs"]) for e in explanations.values() for m in e["methods"].values()), default=0)
    shown_k = (
        top_k or explained_k or max((len(rows) for per_q in ranking["top"].values() for rows in per_q), default=10)
    )

    truth_known = (
        kind == "bench"
        or any(
            d.get("poisoned") is not None
            for e in explanations.values()
            for m in e["methods"].values()
            for d in m["docs"]
        )
        or any(r.get("poisoned") for per_q in ranking["top"].values() for rows in per_q for r in rows)
    )

    docs: dict[str, dict[str, Any]] = {}

    def doc_entry(train_id: str, poisoned: Any) -> None:
        entry = docs.setdefault(train_id, {"t": None, "rs": None, "text": None, "p": None})
        if kind == "bench":
            entry["p"] = (train.get(train_id) or {}).get("poisoned")  # pair label or None
        elif truth_known and entry["p"] is None:
            entry["p"] = bool(poisoned) or None

    queries_out = []
    for qi, q in enumerate(ranking["queries"]):
        qid = q["id"]
        ex = explanations.get(qid)
        bq = bench_queries.get(qid, {})
        negative = q.get("negative") or (ex or {}).get("query", {}).get("negative", "")
        positive = q.get("positive") or (ex or {}).get("query", {}).get("positive")
        prompt = bq.get("prompt") or (ex or {}).get("query", {}).get("prompt") or ""
        neg_seg, pos_seg = _word_diff(negative, positive or "")
        entry: dict[str, Any] = {
            "id": qid,
            "prompt": prompt,
            "neg": neg_seg,
            "pos": pos_seg if positive else None,
            "kind": bq.get("kind"),
            "pair": bq.get("pair"),
            "query_tokens": (ex or {}).get("query_tokens"),
            "methods": {},
        }
        for m in methods:
            explained = {d["train_id"]: d for d in (ex or {}).get("methods", {}).get(m, {}).get("docs", [])}
            rows = []
            for r in ranking["top"][m][qi][:shown_k]:
                tid = r["train_id"]
                d = explained.get(tid)
                doc_entry(tid, r.get("poisoned") if d is None else d.get("poisoned"))
                row: dict[str, Any] = {"r": r["rank"], "id": tid, "s": r["score"]}
                if d is not None:
                    if docs[tid]["t"] is None:
                        docs[tid]["t"] = [t for t, _ in d["tokens"]]
                        docs[tid]["rs"] = d["response_start"]
                        docs[tid]["sp"] = d.get("special", [])
                        docs[tid]["bs"] = min(d.get("body_start", 0), d["response_start"])
                    row["c"], row["cs"] = _quantize([c for _, c in d["tokens"]])
                    row["sums"] = d["sums"]
                    row["side"] = {k: d["query_side"][k] for k in ("negative", "positive")}
                    row["by_token"] = d["query_side"].get("by_token")
                rows.append(row)
            entry["methods"][m] = rows
        queries_out.append(entry)
    for tid, entry in docs.items():
        if entry["t"] is None and tid in train:
            t = train[tid]
            text = f"{t.get('document', '')}\n→ {t.get('summary', '')}"
            entry["text"] = text if len(text) <= SNIPPET_CHARS else "…" + text[-SNIPPET_CHARS:]

    data: dict[str, Any] = {
        "title": f"dda: why — {run.name}",
        "kind": kind,
        "run": str(run),
        "methods": methods,
        "explained": sorted({m for e in explanations.values() for m in e["methods"]}),
        "k": shown_k,
        "truth_known": truth_known,
        "queries": queries_out,
        "docs": docs,
        "agreement": _agreement(ranking["top"], shown_k),
        "orientation": ranking.get("orientation", ""),
        "cost": next(iter(explanations.values()))["cost"] if explanations else None,
    }
    if kind == "bench":
        data["bench"] = _bench_section(run, list(explanations.values()), bench_queries)
    return data


# The run's facts the page shows above its tables, as metrics.json names them.
RUN_FACTS = (
    "preset",
    "seed",
    "model",
    "n_train",
    "n_poisoned",
    "n_queries",
    "query_mode",
    "hallucination_rate",
    "wall_seconds",
)


def _bench_section(run: Path, explanations: list[dict[str, Any]], queries: dict[str, Any]) -> dict[str, Any]:
    metrics = read_json(run / "metrics.json")
    methods = metrics.get("methods") or {}
    main = sorted(
        (n for n in methods if not (n.startswith("dda_") and n != "dda")), key=lambda n: -(methods[n].get("auc") or 0)
    )
    ablations = [n for n in ("dda", "dda_no_denoise", "dda_no_debias", "dda_no_contrast") if n in methods]
    row = lambda n: {"method": n, **{k: methods[n].get(k) for k in ("auc", "auc_std", "ap", "recall@10")}}  # noqa: E731
    canary_of = {qid: str(r.get("pair", "")).split("->")[-1] for qid, r in queries.items() if r.get("pair")}
    canary = None
    if explanations and canary_of:
        method = "dda" if any("dda" in e["methods"] for e in explanations) else next(iter(explanations[0]["methods"]))
        canary = {
            "all": top_token_stats(explanations, canary_of, method),
            "response": top_token_stats(explanations, canary_of, method, response_only=True),
        }
    return {
        "facts": {k: metrics.get(k) for k in RUN_FACTS},
        "table1": [row(n) for n in main],
        "table2": [row(n) for n in ablations],
        "beta_svg": beta_svg(metrics.get("beta_curve") or {}, (metrics.get("dda") or {}).get("debias_mode", "base")),
        "notes": metrics.get("notes", []),
        "canary": canary,
    }


# ------------------------------------------------------------------------------------------------- β curve


def beta_svg(curves: dict[str, Any], primary: str = "base", width: int = 560, height: int = 300) -> str:
    """AUC (%) against β for every reading in metrics.json's beta_curve, as an inline SVG (no script)."""
    if not curves:
        return ""
    if "betas" in curves:  # a single curve (report.md's shape)
        curves = {primary: curves}
    pts = [
        (float(b), float(a))
        for c in curves.values()
        for b, a in zip(c["betas"], c["auc"], strict=True)
        if a is not None
    ]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0 = min(40.0, min(100 * p[1] for p in pts) - 2)
    y1 = 100.0
    left, right, top, bottom = 46, 130, 14, 34
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / max(x1 - x0, 1e-9) * pw

    def sy(y: float) -> float:
        return top + (y1 - y) / max(y1 - y0, 1e-9) * ph

    palette = ["#b91c1c", "#1d4ed8", "#047857", "#7c3aed", "#b45309", "#0e7490"]
    out = [
        f'<svg class="beta" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="DDA AUC against beta">'
    ]
    for y in range(int(y0 // 10 * 10 + 10), 101, 10):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y}</text>'
        )
    ticks = sorted({p[0] for p in pts})
    for b in ticks:
        if b in (x0, x1) or abs(b) >= 0.5 or b == 0:
            out.append(f'<text x="{sx(b):.1f}" y="{top + ph + 16}" text-anchor="middle">{b:g}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">β</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2:.1f}" transform="rotate(-90 12 {top + ph / 2:.1f})" '
        f'text-anchor="middle">AUC %</text>'
    )
    if y0 < 50:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(50):.1f}" y2="{sy(50):.1f}" class="chance"/>')
    if x0 <= 0.4 <= x1:
        out.append(
            f'<line x1="{sx(0.4):.1f}" x2="{sx(0.4):.1f}" y1="{top}" y2="{top + ph}" class="paper"/>'
            f'<text x="{sx(0.4) + 3:.1f}" y="{top + 10}" class="small">paper β≈0.4</text>'
        )
    keys = sorted(curves, key=lambda k: (k != primary, k))
    for i, key in enumerate(keys):
        c = curves[key]
        xy = [(sx(float(b)), sy(100 * float(a))) for b, a in zip(c["betas"], c["auc"], strict=True) if a is not None]
        color = palette[i % len(palette)]
        width_px = 2.6 if key == primary else 1.2
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="{width_px}"/>')
        for x, y in xy:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{2.4 if key == primary else 1.6}" fill="{color}"/>')
        out.append(
            f'<text x="{left + pw + 8}" y="{top + 12 + 15 * i}" fill="{color}">'
            f"{html.escape(key)}{' (dda)' if key == primary else ''}</text>"
        )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------------- page


def render(data: dict[str, Any]) -> str:
    """The page: static head and styles, the data as inline JSON, the script that lays it out."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")  # inert in <script>
    return (
        _PAGE.replace("__TITLE__", html.escape(data["title"]))
        .replace("__STYLE__", _STYLE)
        .replace("__SCRIPT__", _SCRIPT)
        .replace("__DATA__", payload)
    )


def write_page(run_dir: str | Path, out: str | Path, top_k: int | None = None) -> Path:
    """Collect RUN_DIR and write the page to OUT (atomically). Returns OUT."""
    return write_page_text(out, render(collect(run_dir, top_k)))


def write_page_text(out: str | Path, page: str) -> Path:
    out = Path(out)
    write_text(out, page)
    os.chmod(out, 0o644)  # a page to open and share (the atomic write's temp file is created 0600)
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__STYLE__</style></head>
<body>
<noscript><p class="warn">This report lays itself out with an inline script: enable JavaScript.</p></noscript>
<header id="top"></header>
<main><section id="summary"></section><section id="query"></section></main>
<script type="application/json" id="dda-data">__DATA__</script>
<script>__SCRIPT__</script>
</body></html>
"""

_STYLE = r"""
:root{--fg:#1f2328;--muted:#656d76;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--neg:#b91c1c;--pos:#1d4ed8}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:var(--fg);background:var(--bg)}
header{padding:14px 28px;border-bottom:1px solid var(--line);background:var(--soft)}
header h1{font-size:20px;margin:0 0 2px}
header p{margin:0;color:var(--muted);font-size:13px}
main{padding:8px 28px 40px;max-width:1200px}
h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:#0969da;text-decoration:none}a:hover{text-decoration:underline}
.muted{color:var(--muted)}.small{font-size:12px}
.legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
.out{font-size:15px;margin:2px 0}
.out .lab{display:inline-block;width:78px;color:var(--muted);font-size:12px;text-transform:uppercase}
mark.chg-neg{background:#fecaca;color:#7f1d1d;border-radius:3px;padding:0 2px}
mark.chg-pos{background:#bfdbfe;color:#1e3a8a;border-radius:3px;padding:0 2px}
details.prompt{margin:6px 0;font-size:13px;color:#333}
details.prompt div{white-space:pre-wrap;max-height:220px;overflow:auto;background:var(--soft);padding:6px 8px;
 border:1px solid var(--line);border-radius:4px}
.qtok span{display:inline-block;margin:1px 2px;padding:0 4px;border:1px solid var(--line);border-radius:3px;
 font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
.qtok span.target{border-color:var(--neg);background:#fee2e2}
.qtok span.target.p{border-color:var(--pos);background:#dbeafe}
.method{margin-top:14px}
.doc{border:1px solid var(--line);border-radius:6px;margin:8px 0;padding:6px 10px}
.doc .head{font-size:13px;display:flex;gap:14px;flex-wrap:wrap;align-items:baseline}
.doc .head b{font-size:14px}
.truth{font-weight:700;color:#fff;background:var(--neg);border-radius:3px;padding:0 6px;font-size:12px}
.clean{color:var(--muted);font-size:12px}
.toks{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;white-space:pre-wrap;
 word-break:break-word;margin-top:4px;line-height:1.65}
.toks.prompt{max-height:7.5em;overflow:auto;color:#333;border-top:1px dashed var(--line);padding-top:3px}
.toks.prompt.open{max-height:none}
.toks .tk{border-radius:2px}
.toks .sp{color:#999;font-size:11px}
.lbl{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.03em;margin-right:6px}
.plain{white-space:pre-wrap;font-size:12.5px;color:#333;max-height:7.5em;overflow:auto}
.grid-agree td{text-align:center;min-width:54px}
svg.beta text{font-size:11px;fill:#444}svg.beta .small{font-size:10px;fill:#777}
svg.beta .grid{stroke:#e5e7eb}svg.beta .chance{stroke:#111;stroke-dasharray:2 3}
svg.beta .paper{stroke:#999;stroke-dasharray:5 4}
nav.qnav{margin:10px 0;font-size:13px}
nav.qnav a{margin-right:14px}
.warn{background:#fff3cd;padding:8px 12px}
button.linkish{border:0;background:none;color:#0969da;cursor:pointer;font-size:12px;padding:0}
"""

_SCRIPT = r"""
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
    t.append(el("tr", {}, ...["method", "AUC %", "± std", "AP %", "Recall@10 %"].map(x => el("th", {}, x))));
    for (const r of rows) t.append(el("tr", {}, el("td", {}, r.method), el("td", {class: "num"}, pct(r.auc)),
      el("td", {class: "num"}, pct(r.auc_std)), el("td", {class: "num"}, pct(r.ap)),
      el("td", {class: "num"}, pct(r["recall@10"]))));
    return [el("h3", {}, title), t];
  };
  out.push(...table("Table 1: methods (AUC of poisoned vs clean training documents)", b.table1));
  out.push(...table("Table 2: DDA ablations", b.table2));
  if (b.beta_svg) out.push(el("h3", {}, "β curve (DDA AUC against β, each debias reading)"),
                           el("div", {html: b.beta_svg}));
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
"""
