"""Golden chat-template renderings by transformers, for tests/test_chat_template.py.

Record of how tests/golden/chat_template_renders.json was made; CI does not run it. Each case is rendered by
transformers' own `render_jinja_template` (the function behind `apply_chat_template`), so our ChatTemplate is
checked against the real thing: SmolLM2's template (from the default model) and hand-written templates in the
style of Llama 3 / Mistral / tool-calling templates that use trim, raise_exception, namespace, loop controls,
whitespace control and tojson. (The Gemma 3 270M GGUF carries no chat template.)

    PYTHONPATH=. /tmp/hf/bin/python scripts/make_golden_chat.py
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

LLAMA3_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
TOOLS_STYLE = """{%- set ns = namespace(system='', turns=0) -%}
{%- for m in messages -%}
    {%- if m.role == 'system' -%}
        {%- set ns.system = m.content -%}
        {%- continue -%}
    {%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- if ns.turns > 3 %}{% break %}{% endif %}
<{{ m.role }}>
    {% if m.content is string %}{{ m.content }}{% else %}{{ m.content | tojson }}{% endif %}

</{{ m.role }}>
{% endfor %}
{% if tools %}
TOOLS: {{ tools | tojson(indent=2) }}
{% endif %}
SYSTEM={{ ns.system }} TURNS={{ ns.turns }}{% if add_generation_prompt %}
<assistant>{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello! What's 2+2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "  Café, naïve — ok?  "},
     {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And 日本?\nTwo lines."}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"},
     {"role": "assistant", "content": "w"}, {"role": "user", "content": "v"}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def templates() -> dict[str, dict]:
    from service.model.gguf_file import open_gguf
    from service.model.registry import resolve_model_path

    out = {
        "smollm2": {"source": open_gguf(resolve_model_path(None)).metadata["tokenizer.chat_template"],
                    "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        "llama3_style": {"source": LLAMA3_STYLE, "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "mistral_style": {"source": MISTRAL_STYLE, "bos_token": "<s>", "eos_token": "</s>"},
        "tools_style": {"source": TOOLS_STYLE, "bos_token": "<s>", "eos_token": "</s>"},
    }
    return out


def main() -> int:
    from transformers.utils.chat_template_utils import render_jinja_template

    cases = []
    for name, t in templates().items():
        for ci, messages in enumerate(CONVERSATIONS):
            for gen in (True, False):
                for tools in ((None, TOOLS) if name == "tools_style" else (None,)):
                    case = {"template": name, "conversation": ci, "add_generation_prompt": gen, "tools": tools}
                    try:
                        rendered, _ = render_jinja_template([messages], tools=tools, chat_template=t["source"],
                                                            add_generation_prompt=gen, bos_token=t["bos_token"],
                                                            eos_token=t["eos_token"])
                        case["rendered"] = rendered[0]
                    except Exception as exc:  # the template refused the conversation
                        case["error"] = f"{type(exc).__name__}: {exc}"
                    cases.append(case)
    out = {"reference": f"transformers {version('transformers')} render_jinja_template, jinja2 {version('jinja2')}",
           "templates": templates(), "conversations": CONVERSATIONS, "cases": cases}
    path = "tests/golden/chat_template_renders.json"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases ({sum('error' in c for c in cases)} refusals) to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
