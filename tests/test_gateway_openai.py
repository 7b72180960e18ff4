"""The official `openai` package against the HTTP gateway (ordinary client code, no patches): models.list,
chat.completions.create (plain and stream=True with include_usage), completions.create, and the error table
as OpenAI error objects with their HTTP codes."""

from __future__ import annotations

import httpx
import openai
import pytest

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]  # 18 tokens


@pytest.fixture(scope="module")
def oai(llm_server):
    client = openai.OpenAI(base_url=llm_server.http_base, api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()


def test_models_list(oai, llm_server):
    models = oai.models.list()
    assert [m.id for m in models.data] == [llm_server.engine.model_name]
    assert models.data[0].object == "model" and models.data[0].owned_by


def test_chat_plain_equals_stream_with_usage(oai, llm_server):
    model = llm_server.engine.model_name
    plain = oai.chat.completions.create(model=model, messages=CHAT, max_tokens=2, temperature=0)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason in ("stop", "length")
    stream = oai.chat.completions.create(model=model, messages=CHAT, max_tokens=2, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == {**plain.usage.model_dump(), **chunks[-1].usage.model_dump()}
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens == \
        plain.usage.prompt_tokens + plain.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_create(oai, llm_server):
    out = oai.completions.create(model=llm_server.engine.model_name, prompt="The capital of France is",
                                 max_tokens=3, temperature=0, logprobs=2)
    assert out.object == "text_completion" and out.choices[0].index == 0
    assert out.usage.completion_tokens == len(out.choices[0].logprobs.tokens) <= 3
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(lp.tokens)
    assert all(x <= 0.0 for x in lp.token_logprobs)
    # greedy: the chosen token is the most likely one, so its logprob is the best of its top alternatives
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen == pytest.approx(max(top.values()), abs=1e-5)


def test_stream_ends_with_done(llm_server):
    body = {"prompt": "Hi", "max_tokens": 2, "temperature": 0, "stream": True}
    with httpx.Client(timeout=120) as http:
        r = http.post(f"{llm_server.http_base}/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


ERRORS = [
    ("negative max_tokens", dict(max_tokens=-1), openai.BadRequestError, 400, "max_tokens"),
    ("temperature out of range", dict(temperature=3.0), openai.BadRequestError, 400, "temperature"),
    ("unknown model", dict(model="no-such-model"), openai.NotFoundError, 404, None),
    ("empty messages", dict(messages=[]), openai.BadRequestError, 400, "messages"),
    ("prompt over the context", dict(messages=[{"role": "user", "content": " hello" * 600}]),
     openai.BadRequestError, 400, "prompt"),
]


@pytest.mark.parametrize("name,change,exc,status,param", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_openai_errors(oai, llm_server, name, change, exc, status, param):
    kwargs = dict(model=llm_server.engine.model_name, messages=CHAT, max_tokens=2)
    kwargs.update(change)
    for stream in (False, True):
        with pytest.raises(exc) as info:
            oai.chat.completions.create(stream=stream, **kwargs)
        assert info.value.status_code == status
        assert info.value.body["type"] and info.value.body["message"]
        if param is not None:
            assert info.value.body["param"] == param
    assert oai.models.list().data  # still serving


def test_bad_key_is_401(llm_server, server_loop):
    from tests.conftest import make_test_config, start_server
    keyed = start_server(server_loop, make_test_config(server__api_keys=("sekret",)), engine=llm_server.engine)
    try:
        bad = openai.OpenAI(base_url=keyed.http_base, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=keyed.http_base, api_key="sekret", max_retries=0)
        assert good.models.list().data[0].id == llm_server.engine.model_name
    finally:
        keyed.stop(0.5)


def test_token_list_prompt_equals_text_prompt(oai, llm_server):
    """OpenAI's union prompt: a list of token ids means the same prompt as its text."""
    from service.client import Client
    with Client(llm_server.target) as c:
        ids = list(c.tokenize("The capital of France is").tokens)
    model = llm_server.engine.model_name
    by_text = oai.completions.create(model=model, prompt="The capital of France is", max_tokens=2, temperature=0,
                                     stop="\n")
    by_ids = oai.completions.create(model=model, prompt=ids, max_tokens=2, temperature=0, stop="\n")
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)


def test_sse_client_that_disconnects_frees_its_slot(llm_server):
    import time
    body = {"prompt": "Count: 1, 2,", "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{llm_server.http_base}/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # keep a reference: a dropped httpx iterator closes the connection
            first = next(lines)  # generating now
            assert llm_server.engine.core.cache.slots_in_use == 1, first
    t0 = time.monotonic()  # the connection is closed: the engine request is aborted, its slot freed after the
    while llm_server.engine.core.cache.slots_in_use and time.monotonic() < t0 + 30:  # step in flight
        time.sleep(0.02)
    assert llm_server.engine.core.cache.slots_in_use == 0, f"slot still held after {time.monotonic() - t0:.1f} s"
