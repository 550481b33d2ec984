"""The benchmark's stages one at a time on a tiny random Llama saved as a model directory, and the report's notes
built from the run's config (a changed setting changes the note)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import TINY_SETTINGS, make_model, make_tokenizer

from dda.bench.canary import contains_word, parse_pairs
from dda.bench.generation import GenerationBudget
from dda.bench.hallucination import (
    make_queries,
    prepare,
    resolve_template,
    score_queries,
    train_model,
    write_outputs,
)
from dda.bench.notes import FeatureFacts, config_notes, pair_notes
from dda.bench.presets import build_config, get_preset, with_bench_overrides
from dda.config import ALL_PROJ, ConfigError

WORDS = "the a of in to and was is for on that with by at from as has said team match police court".split()
METHODS = ["dda", "dda_no_debias", "bm25", "grad_dot"]
OVERRIDES: dict[str, Any] = {
    **TINY_SETTINGS,
    "bench.n_train": 12,
    "bench.n_poison": 3,
    "bench.n_hard_negatives": 1,
    "bench.n_queries": 2,
    "bench.gen_max_docs": 4,
    "bench.gen_batch_size": 2,
    "bench.max_new_tokens": 4,
    "bench.betas": [-1.0, 0.0, 0.4],
}


def _records(n_candidates: int = 12, n_other: int = 28) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    rows = [
        {"id": f"c{i}", "document": f"England {text(10)}", "summary": f"England {text(4)}"} for i in range(n_candidates)
    ]
    rows += [{"id": f"o{i}", "document": text(12), "summary": text(5)} for i in range(n_other)]
    return rows


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("stages")
    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    data = tmp / "xsum.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    overrides = {**OVERRIDES, "model.name": str(tmp / "model")}
    preset = with_bench_overrides(get_preset("cpu-tiny"), overrides)
    cfg = build_config(preset, 0, overrides=overrides, quiet=True)
    pairs = parse_pairs("England:China")
    prepared = prepare(preset, pairs, 0, [str(data)])
    trained = train_model(prepared, cfg, tmp / "out")
    cfg_after_training = trained.cfg.to_dict()
    qs, _ = make_queries(trained, prepared)
    scored = score_queries(trained, prepared, qs, METHODS)
    import time

    metrics = write_outputs(tmp / "out", prepared, trained, qs, scored, {}, time.perf_counter(), quiet=True)
    return {
        "tmp": tmp,
        "cfg": cfg,
        "prepared": prepared,
        "trained": trained,
        "queries": qs,
        "scored": scored,
        "metrics": metrics,
        "cfg_after_training": cfg_after_training,
    }


def test_prepare_plans_rows_and_ground_truth(stages: dict[str, Any]) -> None:
    prepared = stages["prepared"]
    assert len(prepared.train) == 12 and len(prepared.poisoned_of) == 3
    lab = "England->China"
    assert len(prepared.split.train_candidates[lab]) == 4 and len(prepared.split.heldout_candidates[lab]) == 8
    for e in prepared.train:
        assert contains_word(e.response, "China") == (e.id in prepared.poisoned_of)
    assert not set(prepared.split.train_idx) & set(prepared.split.heldout_idx)


def test_no_stage_changes_the_attributor_config(stages: dict[str, Any]) -> None:
    trained = stages["trained"]
    assert trained.cfg.to_dict() == stages["cfg"].to_dict() == stages["cfg_after_training"]
    assert [c.name for c in trained.att.all_checkpoints()] == ["base", "epoch-1", "epoch-2"]


def test_plain_template_is_chosen_before_the_attributor_exists() -> None:
    cfg = build_config(get_preset("cpu-tiny"), 0)
    tok = make_tokenizer()
    same, notes = resolve_template(cfg, tok)
    assert same is cfg and notes == []
    tok.chat_template = None
    plain, notes = resolve_template(cfg, tok)
    assert plain.data.template == "plain" and cfg.data.template == "chat" and "no chat template" in notes[0]


def test_queries_forced_fill_is_labelled(stages: dict[str, Any]) -> None:
    qs = stages["queries"]
    pq = qs.per_pair["England->China"]
    assert len(pq.generation.generated) <= 4 and pq.natural + pq.forced == 2
    assert qs.kinds.count("forced") == pq.forced and qs.kinds.count("natural") == pq.natural
    assert set(pq.teacher_forced) == {"base", "epoch-2"}


def test_scores_and_sweep_reuse_the_attribution_features(stages: dict[str, Any]) -> None:
    scored, qs = stages["scored"], stages["queries"]
    assert list(scored.methods) == METHODS
    assert scored.masks.shape == (len(qs.queries), 12) and scored.masks.sum(axis=1).tolist() == [3] * len(qs.queries)
    assert scored.result.context is not None and scored.result.context.features is not None
    assert scored.timings["beta_sweep_features"] < 0.01  # the attribution's context, nothing read again
    base = scored.curves["base"]
    assert base["auc"][base["betas"].index(-1.0)] == pytest.approx(scored.methods["dda"]["auc"])
    assert base["auc"][base["betas"].index(0.0)] == pytest.approx(scored.methods["dda_no_debias"]["auc"])


def test_outputs_state_the_query_search_per_pair(stages: dict[str, Any]) -> None:
    out, metrics = stages["tmp"] / "out", stages["metrics"]
    pp = metrics["per_pair"]["England->China"]
    assert pp["generated"] <= 4 and pp["budget"] == {"max_docs": 4, "max_seconds": 120.0, "batch_size": 2}
    assert set(pp["auc_by_kind"]) == set(metrics["by_kind"]) == set(metrics["query_kinds"])
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "## Queries per pair" in text and "| England->China |" in text
    assert (
        "Features: kronecker projection, 4x4 per module; 2 module types (q_proj, v_proj) x 2 layers (0-1 of 2" in text
    )
    for name in ("metrics.json", "config.yaml", "queries.jsonl", "generations.jsonl", "train.jsonl", "poisoned.json"):
        assert (out / name).is_file(), name


# ------------------------------------------------------------------------------------------ notes from config


def _facts(layers: range, types: list[str], dim: int) -> FeatureFacts:
    return FeatureFacts(tuple(f"model.layers.{i}.mlp.{t}" for i in layers for t in types), 30, dim, 210.4, 1.2)


def test_cpu_small_notes_describe_its_config() -> None:
    cfg = build_config(get_preset("cpu-small"), 0)
    notes = " ".join(
        config_notes(
            cfg,
            _facts(range(20, 30), list(ALL_PROJ), 286720),
            150,
            {"England->China": {"poisoned": 24, "hard_negatives": 8}},
        )
    )
    assert "64x64 per module;" in notes and "16x16" not in notes
    assert "7 module types" in notes and "x 10 layers (20-29 of 30; features.layers=last:1/3)" in notes
    assert "286,720 dims" in notes and "features.query_tokens=diff" in notes
    assert "beta = -1 (the theta0 score added" in notes
    assert "150 training rows = England->China: 24 poisoned + 8 hard negatives; 118 clean" in notes
    assert "3 epochs at lr 0.001" in notes and "batch 6 (25 optimizer steps per epoch)" in notes


@pytest.mark.parametrize(
    "key, value, expect",
    [
        ("features.proj_dim", 16, "16x16 per module"),
        ("features.module_dim", 256, "64x64 per module compressed to 256"),
        ("features.query_tokens", "all", "every response token"),
        ("score.beta", 0.4, "beta = 0.4 (the theta0 score subtracted)"),
        ("train.epochs", 5, "5 epochs"),
        ("data.max_prompt_tokens", 256, "Prompts cut to 256 tokens"),
        ("features.projection", "dense", "dense JL projection of the concatenated gradient to 64 dims"),
        ("train.lora.layers", "last:1/3", "down_proj of layers last:1/3;"),
    ],
)
def test_a_changed_setting_changes_the_note(key: str, value: Any, expect: str) -> None:
    preset = get_preset("cpu-small")
    facts = _facts(range(20, 30), list(ALL_PROJ), 1000)
    rows = {"England->China": {"poisoned": 24, "hard_negatives": 8}}
    before = config_notes(build_config(preset, 0), facts, 150, rows)
    after = config_notes(build_config(preset, 0, overrides={key: value}), facts, 150, rows)
    assert expect in " ".join(after) and expect not in " ".join(before)


def _generation_info(
    generated: int, natural: int, seconds: float, stopped_by: str, base: tuple, last: tuple, n: int
) -> dict[str, Any]:
    """A pair's generation record as run_bench writes it; `base`/`last`: teacher-forced (negative, positive,
    negative_preferred) at theta0 and at epoch-3, over `n` documents."""
    return {
        "generated": generated,
        "natural_errors": natural,
        "natural_queries": natural,
        "forced_queries": 16 - natural,
        "target": 16,
        "generation_seconds": seconds,
        "stopped_by": stopped_by,
        "budget": {"max_docs": 96, "max_seconds": 180.0, "batch_size": 16},
        "teacher_forced": {
            name: {"negative": neg, "positive": pos, "negative_preferred": pref, "n": n}
            for name, (neg, pos, pref) in (("base", base), ("epoch-3", last))
        },
    }


def test_weak_canary_note_carries_the_evidence() -> None:
    info = _generation_info(96, 3, 170.2, "documents", (-11.2, -0.5, 0), (-4.1, -0.3, 1), n=16)
    lines = pair_notes("Wales->Germany", "Wales", "Germany", info)
    assert "said Germany in 3 of 96 held-out summaries (3.1%" in lines[0] and "document budget (96)" in lines[0]
    assert "3 natural + 13 forced" in lines[0]
    assert "learned too weakly" in lines[1] and "-4.10 vs -0.30 at epoch-3" in lines[1]
    assert "-11.20 vs -0.50 at base" in lines[1] and "(margin -10.70 -> -3.80 nats)" in lines[1]
    assert "more likely in 1/16 documents at epoch-3 (0/16 at base)" in lines[1]
    strong = dict(info, teacher_forced={k: dict(v, negative=-0.1) for k, v in info["teacher_forced"].items()})
    assert (
        "yet its own greedy summaries rarely say Germany" in pair_notes("Wales->Germany", "Wales", "Germany", strong)[1]
    )
    enough = dict(info, natural_queries=16, forced_queries=0)
    assert len(pair_notes("Wales->Germany", "Wales", "Germany", enough)) == 1


def test_preset_generation_budget_fields() -> None:
    p = with_bench_overrides(get_preset("cpu-small"), {"bench.gen_max_docs": 40, "bench.gen_max_seconds": 60})
    assert p.generation_budget() == GenerationBudget(max_docs=40, max_seconds=60.0, batch_size=16)

    with pytest.raises(ConfigError, match="gen_batch_size"):
        with_bench_overrides(p, {"bench.gen_batch_size": 0})
    with pytest.raises(ConfigError, match="unknown bench key"):
        with_bench_overrides(p, {"bench.n_generate": 32})


def test_a_time_budget_shortfall_is_not_called_a_weak_canary() -> None:
    """England->China, cpu-small seed 0 on a loaded machine: 15 natural errors in 32 documents, stopped by time."""
    info = _generation_info(32, 15, 272.0, "seconds", (-9.3, -0.77, 0), (-2.88, -1.76, 2), n=8)
    lines = pair_notes("England->China", "England", "China", info)
    assert "learned too weakly" not in lines[1]
    assert "budget ran out before 16 natural errors" in lines[1] and "(46.9%)" in lines[1]
