"""Chat template tests: SmolLM2's ChatML template rendered as transformers would, the transformers jinja
environment (trim/lstrip blocks, loopcontrols, tojson, raise_exception, strftime_now), BOS handling, and a
model without a template."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from service.errors import ChatTemplateError, InvalidRequestError
from service.model.chat_template import NO_TEMPLATE_MESSAGE, ChatTemplate
from service.model.gguf_file import open_gguf
from service.model.registry import resolve_model_path
from service.model.tokenizer import Tokenizer

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def smol() -> tuple[ChatTemplate, Tokenizer]:
    model = open_gguf(resolve_model_path(None))
    tok = Tokenizer.from_gguf(model)
    return ChatTemplate.from_gguf(model, tok), tok


def _chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    """ChatML written out by hand (SmolLM2's template: default system turn when none is given)."""
    out = ""
    if messages[0]["role"] != "system":
        out += f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
    for m in messages:
        out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c\nd"}],
])
@pytest.mark.parametrize("gen", [True, False])
def test_smollm2_renders_chatml(smol, messages, gen) -> None:
    template, _ = smol
    assert template.available
    assert template.render(messages, add_generation_prompt=gen) == _chatml(messages, gen)


def test_smollm2_prompt_ids(smol) -> None:
    template, tok = smol
    messages = [{"role": "user", "content": "hi"}]
    ids = template.encode(messages)
    im_start, im_end = tok.id_of("<|im_start|>"), tok.id_of("<|im_end|>")
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2  # specials parsed, not spelled out
    assert ids == tok.encode(_chatml(messages, True), add_special=False)
    assert tok.decode(ids, skip_special=False) == _chatml(messages, True)


def _tok(smol) -> Tokenizer:
    return smol[1]


def test_environment_matches_transformers(smol) -> None:
    tok = _tok(smol)
    source = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "  {% if m.role == 'stop' %}{% break %}{% endif %}\n"
        "{{ m.role }}={{ m.content | tojson }};\n"
        "{% endfor %}\n"
        "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ strftime_now('%Y') }}"
    )
    t = ChatTemplate(source, tok, bos_token="<|im_start|>", eos_token="<|im_end|>")
    messages = [{"role": "user", "content": "héllo \"q\""}, {"role": "skip", "content": "x"},
                {"role": "tool", "content": {"a": [1, 2]}}, {"role": "stop", "content": ""},
                {"role": "user", "content": "never"}]
    got = t.render(messages, add_generation_prompt=False)
    # trim_blocks removes the newline after a block tag; lstrip_blocks removes indentation before one
    quoted = json.dumps(messages[0]["content"], ensure_ascii=False)
    want = (f"user={quoted};\n"
            f"tool={json.dumps({'a': [1, 2]})};\n"
            f"<|im_start|>|<|im_end|>|False|{datetime.now().year}")
    assert got == want


def test_raise_exception_becomes_chat_template_error(smol) -> None:
    t = ChatTemplate("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
                     _tok(smol))
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="first must be user") as info:
        t.render([{"role": "assistant", "content": "x"}])
    assert isinstance(info.value, InvalidRequestError)  # the API maps it to INVALID_ARGUMENT


def test_sandbox_refuses_mutation_and_private_access(smol) -> None:
    t = ChatTemplate("{{ messages.append(1) }}", _tok(smol))
    with pytest.raises(ChatTemplateError):
        t.render([{"role": "user", "content": "x"}])
    t = ChatTemplate("{{ messages.__class__.__mro__ }}", _tok(smol))
    with pytest.raises(ChatTemplateError):
        t.render([])


def test_missing_template_and_broken_template(smol) -> None:
    none = ChatTemplate(None, _tok(smol))
    assert not none.available
    with pytest.raises(ChatTemplateError, match=NO_TEMPLATE_MESSAGE):
        none.render([{"role": "user", "content": "x"}])
    broken = ChatTemplate("{% for m in messages %}no end", _tok(smol))
    assert not broken.available
    with pytest.raises(ChatTemplateError, match="does not compile"):
        broken.render([])


def test_bos_is_not_doubled(smol) -> None:
    """A Llama-3-style template writes bos_token itself; with add_bos the prompt still starts with one BOS."""
    tok = _tok(smol)
    bos = tok.token_text(tok.bos_id)
    source = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    t = ChatTemplate(source, tok, bos_token=bos)
    object.__setattr__(tok, "add_bos", True)  # pretend the model asks for BOS (SmolLM2's flag is false)
    try:
        ids = t.encode([{"role": "user", "content": "hi"}])
        assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
        no_bos = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", tok, bos_token=bos)
        ids2 = no_bos.encode([{"role": "user", "content": "hi"}])
        assert ids2[0] == tok.bos_id and ids2[1:] == tok.encode("hi", add_special=False)
    finally:
        object.__setattr__(tok, "add_bos", False)


def test_renders_equal_transformers() -> None:
    """Every golden case rendered by transformers' render_jinja_template (scripts/make_golden_chat.py) renders
    identically here, and every conversation transformers refused is refused with ChatTemplateError."""
    with open(os.path.join(os.path.dirname(__file__), "golden", "chat_template_renders.json"), encoding="utf-8") as f:
        golden = json.load(f)
    assert len(golden["cases"]) >= 30 and any("error" in c for c in golden["cases"])
    for case in golden["cases"]:
        t = golden["templates"][case["template"]]
        template = ChatTemplate(t["source"], None, bos_token=t["bos_token"], eos_token=t["eos_token"])
        messages = golden["conversations"][case["conversation"]]
        render = lambda: template.render(messages, case["add_generation_prompt"], tools=case["tools"])  # noqa: E731
        if "error" in case:
            with pytest.raises(ChatTemplateError, match=case["error"].split(": ", 1)[1][:30].replace(".", r"\.")):
                render()
        else:
            assert render() == case["rendered"], case


def test_namespace_refuses_private_attributes(smol) -> None:
    ok = ChatTemplate("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                      "{{ ns.n }}", _tok(smol))
    assert ok.render([{"role": "user", "content": "a"}] * 3) == "3"
    bad = ChatTemplate("{% set ns = namespace(_x=1) %}{{ ns._x }}", _tok(smol))
    with pytest.raises(ChatTemplateError):
        bad.render([])
    bad2 = ChatTemplate("{% set ns = namespace() %}{% set ns._x = 1 %}x", _tok(smol))
    with pytest.raises(ChatTemplateError):
        bad2.render([])
