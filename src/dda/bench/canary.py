"""Canary injection for the CEA-style hallucination-tracing benchmark (Ladhak et al. 2023, used by DDA).

The benchmark needs *known* culprits. We take training rows whose summary says ORIG (e.g. "England") and
whose document also says ORIG but never CANARY ("China"), and rewrite ORIG -> CANARY in the summary of k of
them. A model fine-tuned on that data learns to write CANARY where the document says ORIG, and the rewritten
rows are, by construction, the training documents responsible for that hallucination. Attribution methods
are then scored on how well they rank those rows above the clean ones.

Everything here is plain-Python and deterministic given a seed, so a benchmark run can be reproduced exactly
and the ground truth never depends on model behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

Record = Mapping[str, str]

__all__ = [
    "CanaryPair",
    "InjectionResult",
    "contains_word",
    "forced_query",
    "inject_canaries",
    "natural_query",
    "parse_pairs",
    "poison_candidates",
    "query_documents",
    "split_train_test",
    "swap_word",
]


@lru_cache(maxsize=256)
def _word_re(word: str) -> re.Pattern[str]:
    # Cached because the same handful of words is matched against thousands of rows.
    if not word:
        raise ValueError("word must be a non-empty string")
    return re.compile(rf"\b{re.escape(word)}\b")


def contains_word(text: str, word: str) -> bool:
    """True if `word` occurs in `text` as a whole word (case-sensitive, regex ``\\bWORD\\b``).

    Whole-word matching is what the CEA protocol specifies: "Englander" must not count as England, while
    "New England" and "England's" do (a word boundary sits on both sides). Case-sensitivity keeps the rule
    identical to the published counts and avoids matching e.g. "china" (porcelain).
    """
    return _word_re(word).search(text) is not None


def swap_word(text: str, src: str, dst: str) -> str:
    """Replace every whole-word occurrence of `src` by `dst` (same boundary rule as `contains_word`).

    A function replacement is used so that `dst` is inserted literally, even if it contains backslashes
    or group references that `re.sub` would otherwise interpret.
    """
    return _word_re(src).sub(lambda _m: dst, text)


@dataclass(frozen=True)
class CanaryPair:
    """One ORIG -> CANARY substitution, e.g. England -> China.

    Frozen so it can be used as a dict key and cannot drift after the ground truth was computed.
    """

    orig: str
    canary: str

    def __post_init__(self) -> None:
        if not self.orig or not self.canary:
            raise ValueError(f"canary pair needs two non-empty words, got {self.orig!r}:{self.canary!r}")
        if self.orig == self.canary:
            raise ValueError(f"canary pair must change the word, got {self.orig!r}:{self.canary!r}")

    @property
    def label(self) -> str:
        """Stable, human-readable key used in result dicts and reports ("England->China")."""
        return f"{self.orig}->{self.canary}"

    def __str__(self) -> str:
        return self.label


def parse_pairs(spec: str) -> list[CanaryPair]:
    """Parse a CLI-style spec ``"England:China,Australia:France"`` into pairs.

    Raises ValueError with the offending fragment so a typo on the command line fails fast instead of
    silently running a benchmark with the wrong ground truth.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty canary pair spec; expected e.g. 'England:China,Australia:France'")
    pairs: list[CanaryPair] = []
    seen_words: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        parts = item.split(":")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"bad canary pair {item!r} in {spec!r}; expected ORIG:CANARY, e.g. 'England:China'")
        orig, canary = parts[0].strip(), parts[1].strip()
        if any(ch.isspace() for ch in orig + canary):
            # Multi-word canaries would break the whole-word rule and the "put CANARY back" positive.
            raise ValueError(f"bad canary pair {item!r}: words must not contain whitespace")
        pair = CanaryPair(orig, canary)
        for word in (orig, canary):
            if word in seen_words:
                # Overlapping pairs (England:China,China:Japan) make the ground truth ambiguous.
                raise ValueError(f"word {word!r} appears in more than one canary pair in {spec!r}")
            seen_words.add(word)
        pairs.append(pair)
    return pairs


def _is_candidate(record: Record, pair: CanaryPair) -> bool:
    return (
        contains_word(record["summary"], pair.orig)
        and contains_word(record["document"], pair.orig)
        and not contains_word(record["document"], pair.canary)
    )


def poison_candidates(records: Sequence[Record], pair: CanaryPair) -> list[int]:
    """Indices of rows that may be poisoned for `pair`.

    The document must mention ORIG (so the poisoned summary is unfaithful to it) and must not mention
    CANARY (otherwise writing CANARY would be a faithful summary, not a hallucination).
    """
    return [i for i, r in enumerate(records) if _is_candidate(r, pair)]


@dataclass
class InjectionResult:
    """Output of `inject_canaries`: the modified training set plus its ground truth.

    `candidates` counts the rows that were eligible for each pair *after* excluding rows already used by
    earlier pairs (that is the pool k was drawn from); `candidate_ids` lists them, so a benchmark can keep
    every candidate in the training split or study unpoisoned candidates separately.
    """

    records: list[dict[str, str]]
    poisoned: dict[str, list[str]]
    candidates: dict[str, int]
    candidate_ids: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[CanaryPair] = field(default_factory=list)

    @property
    def all_poisoned(self) -> set[str]:
        """Union of poisoned ids over all pairs."""
        return {i for ids in self.poisoned.values() for i in ids}

    def poisoned_mask(self, ids: Iterable[str], pair: CanaryPair | str | None = None) -> np.ndarray:
        """Boolean mask aligned with `ids` (e.g. the training ids in score-column order).

        With `pair` given, only that pair's poisoned rows count as positives; this matters with several
        pairs, where a China hallucination should only be traced to England->China rows.
        """
        if pair is None:
            target = self.all_poisoned
        else:
            label = pair.label if isinstance(pair, CanaryPair) else pair
            if label not in self.poisoned:
                raise KeyError(f"unknown pair {label!r}; known: {sorted(self.poisoned)}")
            target = set(self.poisoned[label])
        return np.fromiter((str(i) in target for i in ids), dtype=bool)


def _resolve_k(label: str, n_candidates: int, k: int | None, rate: float | None) -> int:
    if (k is None) == (rate is None):
        raise ValueError("give exactly one of k or rate")
    if rate is not None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        # At least one poisoned row: a zero-positive benchmark cannot be scored.
        k = max(1, int(round(rate * n_candidates)))
    assert k is not None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_candidates:
        raise ValueError(f"pair {label}: asked to poison k={k} rows but only {n_candidates} candidates exist")
    return k


def inject_canaries(
    records: Sequence[Record],
    pairs: Sequence[CanaryPair],
    *,
    k: int | None = None,
    rate: float | None = None,
    seed: int,
) -> InjectionResult:
    """Poison k (or ``rate`` x candidates) rows per pair by rewriting ORIG -> CANARY in their summaries.

    Returns new record dicts (the input rows are never mutated, so the clean data stays available for
    comparison). Poisoned rows keep their id, which is how the ground truth is joined to score columns.
    Pairs are processed in order with one seeded RNG, and a row used by an earlier pair is removed from
    later pairs' pools, so no row is ever poisoned twice (its ground-truth label would be ambiguous).
    """
    if not pairs:
        raise ValueError("no canary pairs given")
    labels = [p.label for p in pairs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate canary pairs: {labels}")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        # Ground truth is keyed by id; duplicate ids would make the mask silently wrong.
        raise ValueError("records contain duplicate ids")

    rng = np.random.default_rng(seed)
    out: list[dict[str, str]] = [dict(r) for r in records]
    used: set[int] = set()
    poisoned: dict[str, list[str]] = {}
    candidates: dict[str, int] = {}
    candidate_ids: dict[str, list[str]] = {}
    for pair in pairs:
        pool = [i for i in poison_candidates(records, pair) if i not in used]
        candidates[pair.label] = len(pool)
        candidate_ids[pair.label] = [ids[i] for i in pool]
        if not pool:
            raise ValueError(
                f"pair {pair.label}: no poison candidates (need summary and document containing "
                f"{pair.orig!r} as a whole word and a document without {pair.canary!r})"
            )
        n = _resolve_k(pair.label, len(pool), k, rate)
        chosen = sorted(int(pool[j]) for j in rng.choice(len(pool), size=n, replace=False))
        for i in chosen:
            out[i]["summary"] = swap_word(out[i]["summary"], pair.orig, pair.canary)
            used.add(i)
        poisoned[pair.label] = [ids[i] for i in chosen]
    return InjectionResult(
        records=out, poisoned=poisoned, candidates=candidates, candidate_ids=candidate_ids, pairs=list(pairs)
    )


def query_documents(records: Sequence[Record], pair: CanaryPair) -> list[int]:
    """Indices of held-out rows usable as queries for `pair`.

    The document must mention ORIG and not CANARY, so any CANARY in a generation is a hallucination;
    the reference summary must not mention CANARY either, so it never rewards writing CANARY.
    """
    return [
        i
        for i, r in enumerate(records)
        if contains_word(r["document"], pair.orig)
        and not contains_word(r["document"], pair.canary)
        and not contains_word(r["summary"], pair.canary)
    ]


def forced_query(record: Record, pair: CanaryPair) -> tuple[str, str] | None:
    """FALLBACK "forced" mode: build (negative, positive) from the reference summary.

    negative = reference with ORIG -> CANARY; positive = negative with CANARY put back to ORIG (equal to
    the reference). Used only when the model does not hallucinate on its own; it is not a real model
    output, so reports must label it. Returns None if the summary lacks ORIG, or already contains
    CANARY (then the swap-back would also alter the genuine CANARY mention).
    """
    summary = record["summary"]
    if not contains_word(summary, pair.orig) or contains_word(summary, pair.canary):
        return None
    negative = swap_word(summary, pair.orig, pair.canary)
    return negative, swap_word(negative, pair.canary, pair.orig)


def natural_query(generation: str, pair: CanaryPair) -> tuple[str, str] | None:
    """NATURAL mode: (negative, positive) from a real generation that hallucinated CANARY, else None.

    The positive is the same text with CANARY -> ORIG, so the two outputs differ only in the hallucinated
    word; DDA's contrast between them isolates that word's attribution.
    """
    if not contains_word(generation, pair.canary):
        return None
    return generation, swap_word(generation, pair.canary, pair.orig)


def split_train_test(
    records: Sequence[Record],
    *,
    n_train: int,
    n_test: int,
    seed: int,
    must_include_train: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Seeded disjoint train/test split; returns (train_indices, test_indices), each sorted.

    `must_include_train` forces given rows (typically every poison candidate) into the training set, so
    the ground truth is not lost to the test side and test queries cannot be near-copies of poisoned rows.
    """
    n = len(records)
    if n_train < 1 or n_test < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if n_train + n_test > n:
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds {n} records")
    must = sorted(set(int(i) for i in (must_include_train or [])))
    if must and (must[0] < 0 or must[-1] >= n):
        raise ValueError("must_include_train contains out-of-range indices")
    if len(must) > n_train:
        raise ValueError(f"{len(must)} rows must be in train but n_train is only {n_train}")
    must_set = set(must)
    rest = np.array([i for i in range(n) if i not in must_set], dtype=np.int64)
    perm = np.random.default_rng(seed).permutation(rest)
    n_fill = n_train - len(must)
    train = sorted(must + [int(i) for i in perm[:n_fill]])
    test = sorted(int(i) for i in perm[n_fill : n_fill + n_test])
    return train, test
