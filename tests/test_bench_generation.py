"""The natural-query search: the generation loop's budget, natural queries first, forced ones labelled, and the
teacher-forced canary evidence; on tiny random models (the loop's own logic also with a plain text generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SETTINGS, make_model, make_tokenizer

from dda import Attributor, Example, apply_overrides
from dda.bench.canary import CanaryPair, contains_word, swap_word
from dda.bench.generation import GenerationBudget, canary_logprobs, generate_summaries, generate_until
from dda.bench.presets import get_preset, with_bench_overrides
from dda.bench.queries import build_queries
from dda.config import DDAConfig


def _says(word: str):
    return lambda text: contains_word(text, word)


class Clock:
    """Seconds as seen by the loop: only generate() calls move it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _echo(docs: dict[int, str], calls: list[list[int]], clock: Clock | None = None, seconds: float = 0.0):
    """Summaries that repeat the document (a document containing the canary yields a natural error); each call
    takes `seconds` on `clock`."""

    def generate(idx: list[int]) -> list[str]:
        calls.append(list(idx))
        if clock is not None:
            clock.now += seconds
        return [docs[i] for i in idx]

    return generate


def test_stops_at_target_and_keeps_order() -> None:
    docs = {i: ("China" if i in (2, 3, 5, 8) else "England") for i in range(10)}
    calls: list[list[int]] = []
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    run = generate_until(
        _echo(docs, calls), order, _says("China"), target=2, budget=GenerationBudget(100, 1e9, 3), texts={}
    )
    assert run.stopped_by == "target"
    assert calls == [[7, 8, 9], [4, 5, 6]]  # batches in the given order, each sorted for stable padding
    assert run.generated == [9, 8, 7, 6, 5, 4] and run.errors == [8, 5]


def test_document_budget_is_never_exceeded() -> None:
    docs = {i: "England" for i in range(20)}
    calls: list[list[int]] = []
    run = generate_until(
        _echo(docs, calls),
        list(range(20)),
        _says("China"),
        target=3,
        budget=GenerationBudget(max_docs=7, max_seconds=1e9, batch_size=3),
        texts={},
    )
    assert run.stopped_by == "documents" and len(run.generated) == 7
    assert [len(c) for c in calls] == [3, 3, 1]  # the last batch is cut to the budget


def test_time_budget_checked_before_each_batch() -> None:
    docs = {i: "England" for i in range(50)}
    calls: list[list[int]] = []
    clock = Clock()
    run = generate_until(
        _echo(docs, calls, clock, 10.0),
        list(range(50)),
        _says("China"),
        target=1,
        budget=GenerationBudget(max_docs=50, max_seconds=25.0, batch_size=4),
        texts={},
        clock=clock,
    )
    # batches start at 0, 10 and 20 s (< 25), the third ends at 30 s: no fourth batch
    assert run.stopped_by == "seconds" and len(calls) == 3 and run.seconds == pytest.approx(30.0)


def test_exhausted_and_cached_documents_cost_no_generation() -> None:
    docs = {i: ("China" if i == 1 else "England") for i in range(4)}
    calls: list[list[int]] = []
    texts = {0: "England", 1: "China"}  # summarised already for another pair
    run = generate_until(
        _echo(docs, calls), [0, 1, 2, 3], _says("China"), target=5, budget=GenerationBudget(10, 1e9, 2), texts=texts
    )
    assert run.stopped_by == "exhausted" and run.generated == [0, 1, 2, 3] and run.errors == [1]
    assert calls == [[2, 3]]
    with pytest.raises(ValueError, match="batch size"):
        generate_until(_echo(docs, []), [0], _says("China"), 1, GenerationBudget(1, 1.0, 0), {})


# --------------------------------------------------------------------------------------- on a tiny model

DOC_WORDS = "the a of in to and was is for on that with by at from as has said".split()


def _tiny_attributor(tmp: Path) -> Attributor:
    tok = make_tokenizer()
    cfg = apply_overrides(
        DDAConfig(),
        {
            **TINY_SETTINGS,
            "train.epochs": 1,
        },
    )
    return Attributor(cfg, tmp, model=make_model("llama", vocab_size=len(tok)), tokenizer=tok)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("gen")
    att = _tiny_attributor(tmp / "work")
    rng = np.random.default_rng(0)

    def doc(orig: str) -> str:
        return " ".join([orig, *rng.choice(DOC_WORDS, size=8)])

    records = [{"id": f"e{i}", "document": doc("England"), "summary": "the England team won"} for i in range(6)]
    records += [{"id": f"w{i}", "document": doc("Wales"), "summary": "Wales won at the match"} for i in range(6)]
    att.finetune([Example(f"t{i}", doc("England"), "the England team won") for i in range(4)])
    # The tiny random model writes the same few words for every prompt; the first of them that no document
    # contains becomes a canary it says on its own, while it never says China.
    said = generate_summaries(att, [records[0]["document"]], 4)[0].split()
    canary = next(w for w in said if w.isalpha() and w not in DOC_WORDS and w not in ("England", "Wales"))
    return att, records, canary


def test_natural_first_then_forced_fill_labelled(tiny) -> None:
    att, records, canary = tiny
    natural_pair, weak_pair = CanaryPair("England", canary), CanaryPair("Wales", "China")
    preset = with_bench_overrides(
        get_preset("cpu-tiny"),
        {"bench.n_queries": 2, "bench.gen_max_docs": 4, "bench.gen_batch_size": 2, "bench.max_new_tokens": 4},
    )
    heldout = list(range(len(records)))
    cands = {natural_pair.label: list(range(6)), weak_pair.label: list(range(6, 12))}
    qs = build_queries(att, records, heldout, cands, [natural_pair, weak_pair], preset, seed=0)

    nat = qs.per_pair[natural_pair.label]
    assert nat.generation.stopped_by == "target" and len(nat.generation.generated) == 2  # one batch was enough
    assert (nat.natural, nat.forced) == (2, 0)
    weak = qs.per_pair[weak_pair.label]
    assert weak.generation.stopped_by == "documents" and len(weak.generation.generated) == 4
    assert (weak.natural, weak.forced, len(weak.generation.errors)) == (0, 2, 0)
    assert qs.kinds == ["natural", "natural", "forced", "forced"] and qs.mode == "mixed"
    for row, q in zip(qs.rows, qs.queries, strict=True):
        assert row["kind"] in q.id and row["kind"] == ("natural" if row["pair"] == natural_pair.label else "forced")
        if row["kind"] == "natural":
            assert q.negative == row["generation"] and contains_word(q.negative, canary)
        else:  # the reference with the swap, never passed off as the model's own output
            assert q.negative == swap_word(row["reference"], "Wales", "China") and q.positive == row["reference"]
    assert len(qs.generations) == 6 and sum(g["hallucinated"] for g in qs.generations) == 2
    tf = weak.teacher_forced
    assert list(tf) == ["base", "epoch-1"] and tf["base"]["n"] == 2
    assert all(np.isfinite(v["negative"]) and v["negative"] < 0 and np.isfinite(v["positive"]) for v in tf.values())


def test_teacher_forced_logprob_is_the_swapped_token(tiny) -> None:
    """canary_logprobs on a one-word difference equals log softmax at that position, computed directly."""
    import torch

    att, records, _ = tiny
    prompt, pos = records[0]["document"], records[0]["summary"]
    neg = swap_word(pos, "England", "China")
    got = canary_logprobs(att.model, att.formatter, att.pad_id, att.all_checkpoints()[:1], [(prompt, neg, pos)])["base"]
    for text, key in ((neg, "negative"), (pos, "positive")):
        tok = att.formatter.tokenize_pairs([(prompt, text)])
        ids = tok.input_ids[0]
        word = att.tokenizer.convert_tokens_to_ids("China" if key == "negative" else "England")
        at = ids.index(word, list(tok.response_mask[0]).index(True))
        with torch.no_grad():
            logits = att.model(torch.tensor([ids])).logits[0, at - 1]
        assert got[key] == pytest.approx(float(torch.log_softmax(logits.double(), -1)[word]), abs=1e-4)
    assert got["negative_preferred"] == int(got["negative"] > got["positive"])
