"""The engine on the default real model (SmolLM2-135M-Instruct, NumPy backend): a batch of different prompts at
temperature 0 equals single runs token for token, a stop string spanning a token boundary ends the text before
it, and the asyncio stream of a chat completion joins to the unary text. Slow: every step runs the real model."""

from __future__ import annotations

import asyncio
import os

import pytest

from service.config import Config, replace
from service.engine.core import LLMEngine
from service.engine.engine import AsyncEngine
from service.engine.request import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    from service.model.registry import default_model_path
    if not os.path.exists(default_model_path()):
        pytest.skip("default model not pulled (python -m service pull)")
    pytest.importorskip("service.model.tokenizer")
    from service.model.loader import load_model
    return load_model(replace(Config(), model__backend="numpy"))


def engine(loaded, budget=256):
    cfg = replace(Config(), model__backend="numpy", cache__slots=3, cache__max_positions=128,
                  engine__max_running=3, engine__step_token_budget=budget)
    return LLMEngine(loaded.model, loaded.tokenizer, cfg, prefill_chunk=16)


PROMPTS = ["The capital of France is", "def add(a, b):\n   ", "Water boils at a temperature of 100 degrees"]


def test_real_model_batch_equals_singles_and_stop_string(loaded):
    params = SamplingParams(temperature=0.0, max_tokens=6)
    singles = [engine(loaded).generate_sync([p], params)[0] for p in PROMPTS]
    batched = engine(loaded, budget=40).generate_sync(PROMPTS, params)
    assert [r.token_ids for r in batched] == [r.token_ids for r in singles]
    assert singles[0].text.strip().startswith("Paris")  # the model is really running

    # a stop string made of the last character of one token's text and the first of the next
    tok = loaded.tokenizer
    r = singles[0]
    pieces = [tok.token_bytes(t).decode("utf-8", errors="replace") for t in r.token_ids]
    ends = [len("".join(pieces[:i + 1])) for i in range(len(pieces))]  # where each token's text ends
    stop = next(s for k in range(len(pieces) - 1) for s in [r.text[ends[k] - 1:ends[k] + 1]]
                if len(s) == 2 and s.strip() and r.text.find(s) == ends[k] - 1)
    got = engine(loaded).generate_sync([PROMPTS[0]], SamplingParams(temperature=0.0, max_tokens=6, stop=(stop,)))[0]
    assert got.finish_reason == "stop"
    assert got.text == r.text[:r.text.find(stop)] and stop not in got.text


def test_real_model_chat_stream_joins_to_unary(loaded):
    params = SamplingParams(temperature=0.8, seed=5, max_tokens=8)
    messages = [{"role": "user", "content": "Write one word in Japanese."}]

    async def main():
        eng = AsyncEngine(engine(loaded), loaded.name, loaded.chat_template, loaded)
        eng.start()
        prompt = eng.render_chat(messages)
        text, finish, usage = "", None, None
        async for d in eng.generate(prompt, params):
            if d.finish_reason is None:  # at "length" a cut character is flushed as U+FFFD, as decode() does
                assert "\ufffd" not in d.text
            text += d.text
            finish = d.finish_reason or finish
            usage = d.usage or usage
        await eng.shutdown()
        return prompt, text, finish, usage

    prompt, text, finish, usage = asyncio.run(main())
    unary = engine(loaded).generate_sync([prompt], params)[0]
    assert (text, finish) == (unary.text, unary.finish_reason)
    assert usage.completion_tokens == len(unary.token_ids) + (1 if unary.finish_reason == "stop" else 0)
