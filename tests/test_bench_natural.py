"""The preset where the model learns the mistake (cpu-haystack-natural): its levers one at a time (ORIG inside the
prompt window, natural queries only, LoRA only on the tracked layers), then a tiny variant end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SETTINGS, make_model, make_tokenizer, random_examples, tiny_config
from safetensors.torch import load_file

from dda.api import Attributor
from dda.bench.canary import parse_pairs
from dda.bench.hallucination import run_bench
from dda.bench.presets import get_preset, with_bench_overrides
from dda.bench.split import plan_split, window_check

WORDS = "the a of in to and was is for on that with by at from as has said team match police court".split()
PAIR = parse_pairs("England:China")[0]
WINDOW = 16  # prompt tokens; the word-level test tokenizer makes one token per word


def _records() -> list[dict[str, str]]:
    """Candidates naming England first (inside a 16-token window) or after 20 words (outside it), and clean rows."""
    rng = np.random.default_rng(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS, size=k))

    rows = [{"id": f"in{i}", "document": f"England {text(10)}", "summary": f"England {text(4)}"} for i in range(16)]
    rows += [
        {"id": f"out{i}", "document": f"{text(20)} England {text(3)}", "summary": f"England {text(4)}"}
        for i in range(6)
    ]
    rows += [{"id": f"o{i}", "document": text(12), "summary": text(5)} for i in range(28)]
    return rows


def test_the_preset_meets_the_issue_sizes() -> None:
    p = get_preset("cpu-haystack-natural")
    assert p.n_train >= 1000 and p.poison_count() / p.n_train <= 0.025 and p.n_queries >= 12
    assert p.natural_only and p.mention_in_window
    assert p.overrides["train.lora.layers"] == p.overrides["features.layers"]  # adapters only where DDA looks
    assert p.gen_max_docs > get_preset("cpu-haystack").gen_max_docs


def test_split_poisons_only_candidates_that_name_orig_inside_the_window() -> None:
    records = _records()
    in_window = window_check(make_tokenizer(), WINDOW)
    assert in_window(records[0]["document"], "England") and not in_window(records[16]["document"], "England")
    on = with_bench_overrides(
        get_preset("cpu-tiny"), {"bench.n_train": 20, "bench.n_poison": 6, "bench.n_hard_negatives": 8}
    )
    on = with_bench_overrides(on, {"bench.mention_in_window": True, "bench.natural_only": True})
    for seed in range(5):
        split = plan_split(records, [PAIR], on, seed, in_window=in_window)
        chosen = [records[i]["id"] for i in split.train_candidates[PAIR.label]]
        assert len(chosen) == 14 and all(c.startswith("in") for c in chosen)
    off = with_bench_overrides(on, {"bench.mention_in_window": False})
    # without the lever the same seeds put outside-window candidates into training (so the lever does something)
    assert any(
        records[i]["id"].startswith("out")
        for seed in range(5)
        for i in plan_split(records, [PAIR], off, seed).train_candidates[PAIR.label]
    )
    too_many = with_bench_overrides(on, {"bench.n_poison": 17})
    with pytest.raises(ValueError, match="16 candidate rows name 'England' inside the prompt window, need 17"):
        plan_split(records, [PAIR], too_many, 0, in_window=in_window)


def test_lora_layers_put_adapters_only_on_the_selected_layers(tmp_path: Path) -> None:
    tok = make_tokenizer()
    keys = {}
    for layers in ("all", "last:1"):
        cfg = tiny_config(overrides={"train.epochs": 1, "train.lora.layers": layers})
        att = Attributor(cfg, tmp_path / layers.replace(":", "-"), model=make_model("llama", len(tok)), tokenizer=tok)
        ckpt = att.finetune(random_examples(8))[-1]
        keys[layers] = list(load_file(str(Path(ckpt.path) / "adapter_model.safetensors")))
    assert any(".layers.0." in k for k in keys["all"]) and any(".layers.1." in k for k in keys["all"])
    assert keys["last:1"] and all(".layers.1." in k for k in keys["last:1"])
    assert len(keys["last:1"]) * 2 == len(keys["all"])


def test_a_tiny_natural_haystack_runs_end_to_end(tmp_path: Path) -> None:
    """The preset's levers on a tiny random Llama: it learns to write China for England (fully fine-tuned: a 2-layer
    random model cannot learn it through rank-4 adapters), and every query is its own error on a document whose
    prompt window names England; the honest baselines are scored beside DDA."""
    data = tmp_path / "xsum.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()), encoding="utf-8")
    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    overrides = {
        **TINY_SETTINGS,
        "model.name": str(tmp_path / "model"),
        "data.max_prompt_tokens": WINDOW,
        "train.method": "full",
        "train.epochs": 6,
        "train.lr": 3e-3,
        "features.layers": "last:1",
        "bench.n_train": 16,
        "bench.n_poison": 6,
        "bench.n_hard_negatives": 1,
        "bench.n_distractors": 0,
        "bench.n_queries": 2,
        "bench.gen_max_docs": 8,
        "bench.gen_batch_size": 4,
        "bench.max_new_tokens": 4,
        "bench.betas": [0.0],
    }
    methods = ["dda", "keyword", "unsupported", "signature", "repsim"]
    out = tmp_path / "out"
    metrics = run_bench(
        "cpu-haystack-natural",
        "England:China",
        0,
        out,
        data=[str(data)],
        methods=methods,
        quiet=True,
        overrides=overrides,
    )
    assert metrics["query_mode"] == "natural" and metrics["n_queries"] == 2
    assert set(methods) <= set(metrics["methods"])
    poisoned = json.loads((out / "poisoned.json").read_text(encoding="utf-8"))
    assert all(i.startswith("in") for ids in poisoned.values() for i in ids)
    queries = [json.loads(line) for line in (out / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(q["kind"] == "natural" and q["document_id"].startswith("in") for q in queries)
    pair = metrics["per_pair"]["England->China"]
    assert pair["generated_in_window"] == pair["generated"] and pair["forced_queries"] == 0
    assert pair["natural_rate_in_window"] == pair["natural_errors_in_window"] / pair["generated_in_window"] > 0
    # the construction rule knows the poison: it ranks the six poisoned rows first (no distractors here)
    assert metrics["methods"]["signature"]["auc"] == 1.0


def test_a_bad_lora_layers_spec_names_the_field(tmp_path: Path) -> None:
    tok = make_tokenizer()
    cfg = tiny_config(overrides={"train.epochs": 1, "train.lora.layers": "last:x"})
    att = Attributor(cfg, tmp_path / "w", model=make_model("llama", len(tok)), tokenizer=tok)
    with pytest.raises(ValueError, match="train.lora.layers='last:x'"):
        att.finetune(random_examples(4))


def test_natural_rate_in_window_counts_only_documents_whose_prompt_names_orig(tmp_path: Path) -> None:
    """Half the held-out documents name England inside the 16-token window, half after 20 words: the in-window
    counts see only the first half, and with mention_in_window only they are summarised."""
    from dda.bench.queries import build_queries

    tok = make_tokenizer()
    att = Attributor(
        tiny_config(overrides={"train.epochs": 1}), tmp_path / "w", model=make_model("llama", len(tok)), tokenizer=tok
    )
    att.finetune(random_examples(4))
    records = [r for r in _records() if r["id"].startswith(("in", "out"))]  # 16 inside, 6 outside
    heldout = list(range(len(records)))
    budget = {"bench.gen_max_docs": 40, "bench.gen_batch_size": 8, "bench.max_new_tokens": 2, "bench.n_queries": 2}
    for on in (False, True):
        preset = with_bench_overrides(get_preset("cpu-tiny"), {**budget, "bench.mention_in_window": on})
        qs = build_queries(att, records, heldout, {PAIR.label: []}, [PAIR], preset, seed=0)
        pq = qs.per_pair[PAIR.label]
        assert len(pq.generation.generated) == (16 if on else 22)  # the model never says China: all are tried
        assert pq.generated_in_window == 16 and pq.errors_in_window == 0 == len(pq.generation.errors)
