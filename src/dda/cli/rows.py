"""`dda data`: the training rows (and queries) as the model sees them, before anything is computed: the rendered
token sequence with the loss-covered tokens marked, and how many rows were cut."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from ..progress import console, results
from .common import ConfigOpt, DataOpt, ModelOpt, QuietOpt, SetOpt, build_config, clean_errors


def model_context(cfg: Any) -> int | None:
    """The model's context length from its config alone (no weights are loaded)."""
    from transformers import AutoConfig

    from ..models import resolve_model_source

    source, gguf = resolve_model_source(cfg)
    kwargs = {"revision": cfg.revision} if cfg.revision else {}
    if gguf:
        kwargs["gguf_file"] = gguf
    config = AutoConfig.from_pretrained(source, **kwargs)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def _decode(tok: Any, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _marked(tok: Any, ids: list[int], mask: list[bool]) -> Any:
    """Rich text of the sequence, the loss-covered runs underlined in green."""
    from rich.text import Text

    out, start = Text(), 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            out.append(_decode(tok, ids[start:i]), style="bold green underline" if mask[start] else "dim")
            start = i
    return out


def _row_json(tok: Any, row_id: str, ids: list[int], mask: list[bool], cut: bool) -> str:
    target = [t for t, m in zip(ids, mask, strict=True) if m]
    return json.dumps(
        {
            "id": row_id,
            "text": _decode(tok, ids),
            "target": _decode(tok, target),
            "n_tokens": len(ids),
            "n_target": len(target),
            "truncated": cut,
        },
        ensure_ascii=False,
    )


def data(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    queries: Annotated[
        Path | None, typer.Option(help="Also show these queries (negative and positive outputs) as rendered.")
    ] = None,
    rows: Annotated[int, typer.Option(help="Rows shown with their tokens marked (the counts cover every row).")] = 3,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per row on stdout: id, text, target (and counts).")
    ] = False,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Show the training rows as the model sees them: the rendered text with the loss-covered tokens marked
    (green, underlined), the detected format, and how many rows were cut. Nothing is computed.

    Example: `dda data --data train.jsonl --model ./my-model`; `dda data --data train.jsonl --json | head -2`
    """
    from ..data import PromptFormatter, load_examples, load_queries
    from ..formats import loss_target
    from ..models import load_tokenizer

    options = {"model.name": model, "data.path": data}
    with clean_errors():
        cfg = build_config(config, set_, quiet, **options)
        examples = load_examples(cfg.data)
        tok = load_tokenizer(cfg.model)
        fmt = PromptFormatter(tok, cfg.data, context=model_context(cfg.model))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokenized = fmt.tokenize_examples(examples)
        qs = load_queries(str(queries)) if queries is not None else []
        sides = {}
        if qs:
            sides["negative"] = fmt.tokenize_pairs([(q.prompt, q.negative) for q in qs])
            if all(q.positive for q in qs):
                sides["positive"] = fmt.tokenize_pairs([(q.prompt, q.positive) for q in qs])
    cuts = tokenized.truncated or [False] * len(tokenized)
    if json_out:
        for e, ids, mask, cut in zip(examples, tokenized.input_ids, tokenized.response_mask, cuts, strict=True):
            typer.echo(_row_json(tok, e.id, ids, mask, cut))
        for side, td in sides.items():
            for q, ids, mask, cut in zip(qs, td.input_ids, td.response_mask, td.truncated or [], strict=True):
                typer.echo(_row_json(tok, f"query:{q.id}:{side}", ids, mask, cut))
    elif not quiet:
        for e, ids, mask in list(zip(examples, tokenized.input_ids, tokenized.response_mask, strict=True))[:rows]:
            results.rule(f"row {e.id} ({len(ids)} tokens, {sum(mask)} in the loss)")
            results.print(_marked(tok, ids, mask), soft_wrap=True)
        for side, td in sides.items():
            for q, ids, mask in list(zip(qs, td.input_ids, td.response_mask, strict=True))[:rows]:
                results.rule(f"query {q.id}, {side} ({len(ids)} tokens, {sum(mask)} in the loss)")
                results.print(_marked(tok, ids, mask), soft_wrap=True)
    first = examples[0]
    target = loss_target(first.format, cfg.data.loss_on, isinstance(first.prompt, list), "")
    lengths = [len(s) for s in tokenized.input_ids]
    loss = sum(sum(m) for m in tokenized.response_mask)
    if not quiet:
        console.print(
            f"{len(examples)} rows, format {first.format}, loss on {target} (data.loss_on={cfg.data.loss_on}): "
            f"{sum(lengths)} tokens (longest {max(lengths)}), {loss} in the loss; "
            f"{tokenized.n_truncated} rows cut {fmt.cut_rule()}"
            + (f", {sum(t.n_truncated for t in sides.values())} query sides cut" if sides else ""),
            soft_wrap=True,
        )
        for w in caught:
            console.print(f"[yellow]warning:[/] {w.message}", soft_wrap=True)
