"""The ecosystem's training-data formats, tokenised exactly as TRL's SFTTrainer tokenises them.

Four formats (`data.format`), told apart by a row's keys when the format is `auto`:

- messages           {"messages": [{"role": ..., "content": ...}, ...]}: one conversation per row
- prompt_completion  {"prompt": ..., "completion": ...}: both strings (standard) or both message lists
- text               {"text": ...}: language modelling
- fields             dda's own (prompt_field, response_field) strings, rendered by dda.data.PromptFormatter

For the first three, `RowEncoder` repeats trl 1.16's `SFTTrainer._prepare_dataset`: standard rows get the EOS
token appended to the completion (or the text) unless they end with it and are tokenised as plain text with the
tokenizer's own special tokens; conversational rows go through the tokenizer's chat template (the prompt alone with
the generation prompt, then prompt + completion; the completion starts where the two token lists first differ);
the loss mask is the completion mask, the assistant mask, both, or every token (`data.loss_on`); sequences longer
than `data.max_length` keep their start. Nothing is added that the trainer did not add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("messages", "prompt_completion", "text", "fields")
# Roles TRL's chat datasets use; anything else is almost always a typo that a chat template would drop or mangle.
ROLES = ("system", "developer", "user", "assistant", "tool")
_GENERATION_MARK = re.compile(r"\{%-?\s*generation\s*-?%\}")


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field."""


def detect_format(row: dict[str, Any], prompt_field: str, response_field: str, where: str) -> str:
    """The format a row's keys say it is in, or a DataError listing what is read. The configured field mapping
    comes first (a user who names fields means them), except prompt/completion, which TRL's format reads."""
    if prompt_field in row and response_field in row and (prompt_field, response_field) != ("prompt", "completion"):
        return "fields"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    known = ", ".join(k for k in row if not k.startswith("_")) or "none"
    raise DataError(
        f"{where}: cannot tell the data format from the fields ({known}); expected 'messages', 'prompt' and "
        f"'completion', 'text', or '{prompt_field}' and '{response_field}' (data.prompt_field / "
        "data.response_field); or set data.format"
    )


def check_conversation(value: Any, where: str, name: str, *, last_role: str | None = None) -> list[dict[str, Any]]:
    """A list of {"role", "content"} messages with known roles, or a DataError naming the message and its field."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of messages, got {type(value).__name__}")
    for i, m in enumerate(value):
        at = f"{where}: field '{name}', message {i}"
        if not isinstance(m, dict):
            raise DataError(f"{at}: expected an object with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m:
            raise DataError(f"{at}: missing 'role'")
        if m["role"] not in ROLES:
            raise DataError(f"{at}: unknown role {m['role']!r} (known: {', '.join(ROLES)})")
        if "content" not in m and not m.get("tool_calls"):
            raise DataError(f"{at}: missing 'content'")
        if m.get("content") is not None and not isinstance(m["content"], str | list):
            raise DataError(f"{at}: 'content' must be a string, got {type(m['content']).__name__}")
    if last_role is not None and value[-1]["role"] != last_role:
        raise DataError(f"{where}: field '{name}' must end with a {last_role!r} message, got {value[-1]['role']!r}")
    return value


def conversation_text(messages: list[dict[str, Any]], roles: tuple[str, ...] = ROLES) -> str:
    """Message contents of the given roles, one a line (what text-based scorers such as BM25 read)."""
    return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") in roles)


def has_generation_markers(template: Any) -> bool:
    if isinstance(template, dict):
        template = template.get("default", "")
    return bool(_GENERATION_MARK.search(template or ""))


def loss_target(fmt: str, loss_on: str, conversational: bool, where: str) -> str:
    """What the loss covers for this format: completion, assistant, completion+assistant or all.

    auto is TRL's default: completion_only_loss is on for prompt/completion rows, assistant_only_loss is off."""
    if loss_on == "auto":
        return "completion" if fmt in ("prompt_completion", "fields") else "all"
    if loss_on == "completion" and fmt in ("messages", "text"):
        raise DataError(
            f"{where}: data.loss_on=completion, but {fmt} rows have no completion; use 'all'"
            + (" or 'assistant'" if fmt == "messages" else "")
        )
    if loss_on == "assistant":
        if not conversational:
            raise DataError(f"{where}: data.loss_on=assistant needs conversational rows (lists of messages)")
        return "completion+assistant" if fmt == "prompt_completion" else "assistant"
    return loss_on


@dataclass
class Encoded:
    ids: list[int]
    mask: list[bool]  # True where the token is a loss target (a label other than -100 in the trainer)
    prompt_len: int  # tokens before the completion (the whole row for messages and text)
    cut: bool  # the row was longer than the limit and lost its end


class RowEncoder:
    """Token ids and loss mask of one row, as TRL's SFTTrainer prepares it (see the module docstring)."""

    def __init__(
        self, tokenizer: Any, loss_on: str, max_length: int | None, context: int | None, instruction: str | None = None
    ):
        self.tok = tokenizer
        self.loss_on = loss_on
        self.limit = max_length if max_length is not None else context
        self.instruction = instruction
        self._template: str | None = None  # the training template with generation markers (assistant loss)

    def chat_template(self, target: str, where: str) -> str | None:
        """The template to render with: the tokenizer's own, or (assistant loss without {% generation %} marks)
        the training template TRL swaps in for a template it knows."""
        if "assistant" not in target:
            return None
        if has_generation_markers(getattr(self.tok, "chat_template", None)):
            return None
        if self._template is None:
            try:
                from trl.chat_template_utils import get_training_chat_template
            except ImportError:
                raise DataError(
                    f"{where}: data.loss_on=assistant needs a chat template with {{% generation %}} markers; this "
                    "tokenizer's has none (TRL patches known templates: pip install trl)"
                ) from None
            patched = get_training_chat_template(self.tok)
            if patched is None:
                raise DataError(f"{where}: data.loss_on=assistant: the chat template marks no assistant tokens")
            self._template = patched
        return self._template

    def _with_instruction(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.instruction and messages[0].get("role") != "system":
            return [{"role": "system", "content": self.instruction}, *messages]
        return messages

    def _chat(self, messages: list[dict[str, Any]], kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        out = self.tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs, **extra)
        return {k: list(out[k]) for k in ("input_ids", "assistant_masks") if k in out}

    def _text(self, text: str) -> list[int]:
        return list(self.tok(text=text)["input_ids"])

    def _with_eos(self, text: str) -> str:
        eos = self.tok.eos_token
        return text if eos is None or text.endswith(eos) else text + eos

    def encode(
        self,
        fmt: str,
        prompt: Any,
        completion: Any,
        where: str,
        extra: dict[str, Any] | None = None,
        loss_on: str | None = None,
    ) -> Encoded:
        """One row: `prompt` and `completion` of a prompt/completion row, the conversation (messages) or the
        text (text) as `prompt` with `completion` None. `extra` holds the row's `tools` / `chat_template_kwargs`."""
        conversational = isinstance(prompt, list)
        target = loss_target(fmt, loss_on or self.loss_on, conversational, where)
        extra = extra or {}
        kwargs: dict[str, Any] = {
            "chat_template": self.chat_template(target, where),
            "tools": extra.get("tools"),
            **(extra.get("chat_template_kwargs") or {}),
        }
        assistant = "assistant" in target
        if fmt == "prompt_completion":
            if conversational:
                msgs = self._with_instruction(prompt)
                prompt_ids = self._chat(msgs, kwargs, add_generation_prompt=True)["input_ids"]
                full = self._chat(msgs + completion, kwargs, return_assistant_tokens_mask=assistant)
            else:
                if self.instruction:
                    raise DataError(
                        f"{where}: data.instruction is set, but standard (string) rows have no "
                        "system message to put it in; unset it"
                    )
                prompt_ids = self._text(prompt)
                full = {"input_ids": self._text(prompt + self._with_eos(completion))}
            ids = full["input_ids"]
            start = _common_prefix(prompt_ids, ids)
            masks = [[j >= start for j in range(len(ids))]] if target != "all" else []
        elif fmt == "messages":
            full = self._chat(self._with_instruction(prompt), kwargs, return_assistant_tokens_mask=assistant)
            ids, start, masks = full["input_ids"], len(full["input_ids"]), []
        elif fmt == "text":
            if self.instruction:
                raise DataError(f"{where}: data.instruction is set, but text rows have no system message; unset it")
            ids = self._text(self._with_eos(prompt))
            start, masks = len(ids), []
        else:
            raise ValueError(f"RowEncoder does not render format {fmt!r}")
        if assistant:
            am = full.get("assistant_masks") or []
            if 1 not in am:
                raise DataError(
                    f"{where}: data.loss_on=assistant, but the conversation has no assistant tokens "
                    "(no assistant turn, or a chat template without {% generation %} markers)"
                )
            masks.append([bool(b) for b in am])
        mask = [all(bits) for bits in zip(*masks, strict=True)] if masks else [True] * len(ids)
        cut = self.limit is not None and len(ids) > self.limit
        if cut:
            ids, mask = ids[: self.limit], mask[: self.limit]
        return Encoded(list(ids), mask, min(start, len(ids)), cut)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Leading tokens a and b share: where TRL starts the completion (a template may render a prompt alone
    differently from the same prompt followed by a completion)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
