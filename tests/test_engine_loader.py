"""AsyncEngine.from_config through service/model/loader.py with dummy weights (no file, no vocabulary):
the engine reports the model's limits, takes token-id prompts, and refuses text and chat without a tokenizer."""

from __future__ import annotations

import asyncio

import pytest

from service.config import Config, replace
from service.engine.engine import AsyncEngine
from service.engine.request import SamplingParams
from service.errors import ChatTemplateError, InvalidRequestError


def test_from_config_with_dummy_weights():
    cfg = replace(Config(), model__dummy_weights="tiny", model__backend="numpy", cache__slots=2,
                  cache__max_positions=128)
    eng = AsyncEngine.from_config(cfg)
    assert eng.model_name == "dummy-tiny" and eng.tokenizer is None
    assert eng.context_length == min(128, eng.core.model.hp.context_length)
    assert eng.health() == "LOADING"
    with pytest.raises(ChatTemplateError):
        eng.render_chat([{"role": "user", "content": "hi"}])

    async def main():
        eng.start()
        assert eng.health() == "SERVING"
        deltas = [d async for d in eng.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=4))]
        with pytest.raises(InvalidRequestError):
            async for _ in eng.generate("text needs a tokenizer", SamplingParams()):
                pass
        await eng.shutdown()
        return deltas

    deltas = asyncio.run(main())
    assert [len(d.token_ids) for d in deltas] == [1, 1, 1, 1]  # without text, every token streams at once
    assert deltas[-1].finish_reason == "length" and deltas[-1].usage.total_tokens == 7
    assert all(0 <= t < eng.core.vocab_size for d in deltas for t in d.token_ids)
