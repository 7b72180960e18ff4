"""The model's chat template (`tokenizer.chat_template`), rendered with jinja2 the way transformers does.

Same environment as transformers' `apply_chat_template`: an ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and the loopcontrols extension; a `tojson` filter that keeps non-ASCII text
(ensure_ascii=False); globals `raise_exception(msg)` (raises ChatTemplateError), `strftime_now(fmt)` and a
`namespace` that refuses underscore-prefixed attributes;
variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (None), and any extra
keyword arguments of `render`.

A model without a template still gets a ChatTemplate: its `render` raises ChatTemplateError("model has no
chat template"), which the API maps to INVALID_ARGUMENT for chat requests. A template that does not compile
raises ChatTemplateError at render time as well (so the model still serves plain completions).

BOS: some templates write `{{ bos_token }}` themselves (Llama 3), some don't (SmolLM2's ChatML).
`encode` tokenizes the rendered text with parse_special=True and adds the model's BOS (add_bos flag) only
when the text does not already begin with it, so BOS is never doubled.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from service.errors import ChatTemplateError
from service.model.gguf_file import GGUFModel
from service.model.tokenizer import Tokenizer

NO_TEMPLATE_MESSAGE = "model has no chat template"


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace() refusing underscore-prefixed attributes, as transformers' TemplateNamespace does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


class ChatTemplate:
    """Renders chat messages into the model's prompt text (and token ids)."""

    def __init__(self, source: str | None, tokenizer: Tokenizer | None = None,
                 bos_token: str = "", eos_token: str = ""):
        self.source = source  # the jinja text, or None when the model has none
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._compiled: jinja2.Template | None = None
        self._compile_error: str | None = None
        if source:
            try:
                self._compiled = _environment().from_string(source)
            except jinja2.TemplateError as exc:
                self._compile_error = f"chat template does not compile: {exc}"

    @classmethod
    def from_gguf(cls, model: GGUFModel, tokenizer: Tokenizer) -> "ChatTemplate":
        source = model.metadata.get("tokenizer.chat_template")
        if isinstance(source, bytes):
            source = source.decode("utf-8")
        bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
        eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
        return cls(str(source) if source else None, tokenizer, bos, eos)

    @property
    def available(self) -> bool:
        return self._compiled is not None

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text. Raises ChatTemplateError when there is no usable template or the template
        refuses the messages (raise_exception, or a jinja error such as a missing key)."""
        if self._compiled is None:
            raise ChatTemplateError(self._compile_error or NO_TEMPLATE_MESSAGE)
        variables = {"tools": None, "documents": None, **extra}
        try:
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token, **variables)
        except ChatTemplateError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None

    def encode(self, messages: list[dict], add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        """Prompt token ids: the rendered text with special tokens parsed, BOS added per the model's add_bos
        flag unless the template already wrote it (EOS is never appended)."""
        if self.tokenizer is None:
            raise ChatTemplateError("chat template has no tokenizer")
        text = self.render(messages, add_generation_prompt, **extra)
        tok = self.tokenizer
        ids = tok.encode(text, add_special=False, parse_special=True)
        if tok.add_bos and tok.bos_id is not None and not (ids and ids[0] == tok.bos_id):
            ids = [tok.bos_id] + ids
        return ids  # never add_eos: the prompt must end with the generation prompt, not an end token
