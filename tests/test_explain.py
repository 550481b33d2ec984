"""Token-level attribution: per-position features sum to the stored rows, token contributions sum to scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_SETTINGS, make_model, random_examples, random_token_batch

from dda.features.capture import GradientFeaturizer, freeze, pad_batch, select_modules
from dda.features.projection import DenseProjector, IdentityProjector, KroneckerProjector


def _batch(n: int = 3):
    return random_token_batch(seed=3, n=n, first_len=7, step=4)


PROJECTORS = {
    "kronecker": lambda: KroneckerProjector(4, seed=1),
    "kronecker_module_dim": lambda: KroneckerProjector(4, seed=1, module_dim=5),
    # small blocks so the per-position path crosses block and chunk boundaries inside one module's rows
    "dense": lambda: DenseProjector(16, seed=2, block_elems=16 * 300),
    "identity": IdentityProjector,
}


@pytest.mark.parametrize("kind", list(PROJECTORS))
def test_per_position_features_sum_to_the_row(kind):
    model = make_model("llama")
    freeze(model)
    names = select_modules(model, ["q_proj", "v_proj", "down_proj"])
    fz = GradientFeaturizer(model, names, PROJECTORS[kind]())
    seqs, masks = _batch()
    batch = pad_batch(seqs, masks, 0, torch.device("cpu"))
    rows = fz(*batch)
    per_pos = fz.per_position(*batch)
    assert per_pos.shape == (len(seqs), batch[0].shape[1], fz.dim)
    torch.testing.assert_close(per_pos.sum(1), rows, rtol=1e-4, atol=1e-6)
    # padding carries nothing; prompt positions do carry something (attention takes the loss back to them)
    for i, s in enumerate(seqs):
        assert torch.all(per_pos[i, len(s) :] == 0)
        # the last token predicts nothing and nothing attends back to it: its part is zero, so showing each
        # position's part on the token it predicts (align="target") loses nothing
        assert torch.all(per_pos[i, len(s) - 1] == 0)
        prompt = [t for t, m in enumerate(masks[i]) if not m]
        assert per_pos[i, prompt].abs().sum() > 0


# ------------------------------------------------------------------------------------- end to end, tiny model

from dda import Attributor, Example, Query, apply_overrides  # noqa: E402
from dda.bench.evidence import top_token_stats  # noqa: E402
from dda.config import DDAConfig  # noqa: E402
from dda.explain import read_explanations  # noqa: E402


def _examples(n: int, seed: int = 0) -> list[Example]:
    return random_examples(n, seed, doc_words=(8, 16))


def _attributor(tmp, **extra) -> Attributor:
    from conftest import make_tokenizer

    base = {
        **TINY_SETTINGS,
        "train.lora.target_modules": ["q_proj", "v_proj", "down_proj"],
        "features.modules": ["q_proj", "v_proj", "down_proj"],
        "features.batch_size": 3,
    }
    base.update(extra)
    tok = make_tokenizer()
    return Attributor(
        apply_overrides(DDAConfig(), base), tmp, model=make_model("llama", vocab_size=len(tok)), tokenizer=tok
    )


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    train = _examples(9)
    _attributor(tmp / "ft").finetune(train)
    # a query whose negative and positive differ in one word: the diff contrast runs over that token
    resp = train[3].response.split()
    neg = " ".join(["China", *resp[1:]]) if resp[0] != "China" else " ".join(["England", *resp[1:]])
    queries = [
        Query("q:one", train[3].prompt, neg, train[3].response),
        Query("q/two", train[5].prompt, train[5].response, train[1].response),
    ]
    return tmp, train, queries


PROJECTIONS = {
    "kronecker": {"features.projection": "kronecker", "features.module_dim": 0},
    "kronecker_module_dim": {"features.projection": "kronecker", "features.module_dim": 6},
    "dense": {"features.projection": "dense", "features.proj_dim": 24, "features.module_dim": 0},
    "identity": {"features.projection": "identity", "features.module_dim": 0},
}
GRADIENT_METHODS = [
    "dda(beta=-1)",
    "dda(beta=0.4,debias_mode=cross)",
    "dda(beta=0.5,debias_mode=query0)",
    "dda(normalize=std,beta=-1)",
    "dda(normalize=none,beta=-1)",
    "dda_no_contrast",
    "dda_no_denoise",
    "grad_dot",
    "grad_cos",
    "tracin",
]


@pytest.mark.parametrize("kind", list(PROJECTIONS))
def test_token_contributions_sum_to_the_methods_scores(finetuned, kind):
    tmp, train, queries = finetuned
    att = _attributor(tmp / kind, **PROJECTIONS[kind])
    att.use_checkpoints(tmp / "ft" / "checkpoints")
    att.index(train)
    methods = list(GRADIENT_METHODS)
    if kind != "dense":  # dense JL mixes modules: module normalisation is refused there (and "auto" is none)
        methods.append("dda(normalize=module,beta=-1)")
    expl = att.explain(queries, methods=methods, top_k=4, out_dir=tmp / kind / "attribution", poisoned={"ex1"})
    assert [e["query"]["id"] for e in expl] == ["q:one", "q/two"]
    scored = att.attribute(queries, methods=methods)
    for qi, e in enumerate(expl):
        for m in methods:
            docs = e["methods"][m]["docs"]
            assert [d["rank"] for d in docs] == [1, 2, 3, 4]
            assert [d["train_id"] for d in docs] == [r["train_id"] for r in scored.top(4, m, qi)]
            for d in docs:
                contributions = np.array([c for _, c in d["tokens"]])
                scale = max(abs(d["score"]), 1e-3)
                # the parts sum to the scorer's own score (features recomputed vs. stored: float rounding)
                assert abs(d["explained_score"] - d["score"]) <= 1e-4 * scale + 1e-6, (m, d["train_id"])
                # the JSON keeps 7 significant digits per token: rounding is relative to the tokens' total mass
                assert abs(contributions.sum() - d["score"]) <= 1e-4 * scale + 1e-6 * np.abs(contributions).sum()
                assert d["stored_row_rel_diff"] < 1e-4
                assert d["sums"]["prompt"] + d["sums"]["response"] == pytest.approx(
                    d["explained_score"], rel=1e-6, abs=1e-9
                )
                side = d["query_side"]
                assert side["negative"] + side["positive"] == pytest.approx(d["score"], rel=1e-4, abs=1e-6)
                if side["by_token"] is not None:  # per query-token shares sum to the same score
                    assert sum(t["contribution"] for t in side["by_token"]) == pytest.approx(
                        d["score"], rel=1e-4, abs=1e-6
                    )
                assert d["poisoned"] == (d["train_id"] == "ex1")
                text = "".join(t for t, _ in d["tokens"])
                doc = train[int(d["train_id"][2:])]
                assert doc.response.split()[0] in text[len(text) // 2 :] and doc.prompt.split()[0] in text
                # the document's own text starts after the instruction template
                body = "".join(t for t, _ in d["tokens"][d["body_start"] : d["response_start"]])
                assert 0 < d["body_start"] < d["response_start"] and body.strip().startswith(doc.prompt.split()[0])
    # the diff contrast of query 1 runs over the swapped token only; its per-token share is reported
    qt = expl[0]["query_tokens"]
    assert [t["text"].strip() for t in qt["negative"] if t["target"]] in (["China"], ["England"])
    by_token = expl[0]["methods"]["dda(beta=-1)"]["docs"][0]["query_side"]["by_token"]
    assert by_token is not None and {t["side"] for t in by_token} == {"negative", "positive"}
    # files: one per query (ids with ':' and '/' made safe) and an index
    back = read_explanations(tmp / kind / "attribution")
    assert [b["query"]["id"] for b in back] == ["q:one", "q/two"]
    assert back[0]["methods"]["grad_dot"]["docs"][0]["tokens"] == expl[0]["methods"]["grad_dot"]["docs"][0]["tokens"]
    cost = back[0]["cost"]
    assert cost["rows_recomputed"] <= 4 * len(methods) * 2 * 3 and cost["rows_recomputed"] > 0


def test_explain_named_documents_and_refusals(finetuned):
    tmp, train, queries = finetuned
    att = _attributor(tmp / "named")
    att.use_checkpoints(tmp / "ft" / "checkpoints")
    att.index(train)
    expl = att.explain(queries[:1], methods=["dda"], train_ids=["ex7", "ex2"])
    docs = expl[0]["methods"]["dda"]["docs"]
    assert [d["train_id"] for d in docs] == ["ex7", "ex2"] and docs[0]["poisoned"] is None
    assert all(abs(d["explained_score"] - d["score"]) <= 1e-4 * max(abs(d["score"]), 1e-3) for d in docs)
    # align="input": the same parts one token earlier (the default shows each on the token its position predicts)
    raw = att.explain(queries[:1], methods=["dda"], train_ids=["ex7", "ex2"], align="input")
    for d, r in zip(docs, raw[0]["methods"]["dda"]["docs"], strict=True):
        target, inp = [c for _, c in d["tokens"]], [c for _, c in r["tokens"]]
        assert target[0] == 0 and target[1:] == pytest.approx(inp[:-1], rel=1e-6, abs=1e-12)
        assert r["explained_score"] == pytest.approx(d["explained_score"], rel=1e-9)
        # target alignment: the response sum is the part of the positions that carry a loss
        rs = d["response_start"]
        assert d["sums"]["response"] == pytest.approx(sum(inp[rs - 1 :]), rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError, match="no prompt"):
        att.explain([Query("q", "", "China won")], methods=["dda"])
    with pytest.raises(ValueError, match="align"):
        att.explain(queries, methods=["dda"], align="middle")
    with pytest.raises(ValueError, match="bm25.*no token attribution"):
        att.explain(queries, methods=["bm25"])
    with pytest.raises(ValueError, match="unknown training ids"):
        att.explain(queries, methods=["dda"], train_ids=["nope"])
    # an Attribution carries its queries, ground truth and explainable methods
    result = att.attribute(queries, methods=["dda", "bm25"], poisoned={"ex2"})
    expl = att.explain(result, top_k=2)
    assert list(expl[0]["methods"]) == ["dda"] and len(expl[0]["methods"]["dda"]["docs"]) == 2


def test_top_token_stats_counts_the_canary():
    doc = {
        "rank": 1,
        "poisoned": True,
        "response_start": 2,
        "tokens": [["<s>", 0.1], [" England", 0.2], [" China", 0.9], [" won", 0.3]],
    }
    clean = dict(doc, poisoned=False)
    other = dict(doc, tokens=[["<s>", 0.1], [" England", 0.95], [" China", 0.9], [" won", 0.3]])
    e = [{"query": {"id": "q"}, "methods": {"dda": {"docs": [doc, clean, other]}}}]
    stats = top_token_stats(e, {"q": "China"})
    assert stats["poisoned_docs"] == 2 and stats["on_canary"] == 1 and stats["fraction"] == 0.5
    assert top_token_stats(e, {"q": "China"}, response_only=True)["fraction"] == 1.0


def test_top_token_stats_counts_whole_word_hits_and_distinct_documents():
    def doc(train_id, tokens):
        return {"rank": 1, "poisoned": True, "response_start": 0, "train_id": train_id, "tokens": tokens}

    # ' in' and 'hin' are substrings of 'China' but not whole-word hits; ' Ch' + 'ina' spell the word.
    inside = doc("a", [[" Police", 0.1], [" in", 0.9], [" China", 0.2]])
    piece = doc("b", [[" Chinatown", 0.1], [" Ch", 0.3], ["ina", 0.8], [" won", 0.1]])
    town = doc("c", [[" Chinatown", 0.9], [" China", 0.2]])
    # Document b is in the top k of two queries: two pairs, one distinct document.
    e = [
        {"query": {"id": "q1"}, "methods": {"dda": {"docs": [inside, piece, town]}}},
        {"query": {"id": "q2"}, "methods": {"dda": {"docs": [piece]}}},
    ]
    stats = top_token_stats(e, {"q1": "China", "q2": "China"})
    assert (stats["pairs"], stats["on_canary"]) == (4, 2)
    assert (stats["distinct_docs"], stats["distinct_docs_on_canary"]) == (3, 1)


@pytest.mark.parametrize("width", [80, 200])
def test_terminal_table_shows_a_snippet_with_the_top_tokens(finetuned, width):
    from rich.console import Console

    from dda.demo import print_ranking

    tmp, train, queries = finetuned
    att = _attributor(tmp / "terminal")
    att.use_checkpoints(tmp / "ft" / "checkpoints")
    att.index(train)
    result = att.attribute(queries, methods=["dda"], poisoned={"ex3"})
    expl = att.explain(result, top_k=5)
    console = Console(width=width, record=True, force_terminal=True, color_system="standard")
    print_ranking(result, "dda", 5, expl, out=console)
    plain = console.export_text(clear=False)
    styled = console.export_text(styles=True)
    lines = plain.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "why" in plain
    assert "\x1b[1;31m" in styled  # the top tokens are bold red
    first_table = plain.split("query q/two")[0].splitlines()
    for doc in expl[0]["methods"]["dda"]["docs"]:
        # the snippet's culprit: the largest part among the document's own tokens (not template or special ones)
        first = min(doc["body_start"], doc["response_start"])
        best = max(
            (tc for i, tc in enumerate(doc["tokens"]) if i >= first and i not in doc["special"]), key=lambda tc: tc[1]
        )[0].strip()
        assert best in plain
        row = [line for line in first_table if f" {doc['train_id']} " in line]
        assert len(row) == 1
        if width == 200:  # wide: each document's snippet fits on its row's one line
            assert best in row[0]
    assert plain.count("POISONED") == sum(d["poisoned"] for d in expl[0]["methods"]["dda"]["docs"]) + sum(
        d["poisoned"] for d in expl[1]["methods"]["dda"]["docs"]
    )
