"""Scheduler + engine bookkeeping with a fake model: continuous batching, fixed prefill chunks under a token
budget, the running cap, overload, abort/deadline freeing slots in the same step, and 1,000 random cycles
ending with nothing held."""

from __future__ import annotations

import random

import pytest

from service.config import Config, replace
from service.engine.core import LLMEngine
from service.engine.request import SamplingParams
from service.errors import (CancelledError, ContextOverflowError, DeadlineExceededError, InvalidRequestError,
                            OverloadedError)
from test_engine_fakes import ByteTokenizer, FakeModel


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_engine(slots=4, max_running=4, max_waiting=8, budget=32, max_positions=256, chunk=None, clock=None,
                model=None, streaming=True, overlap="off"):
    cfg = replace(Config(), cache__slots=slots, cache__max_positions=max_positions, cache__sink_tokens=4,
                  engine__max_running=max_running, engine__max_waiting=max_waiting,
                  engine__step_token_budget=budget, engine__allow_streaming_past_context=streaming,
                  engine__overlap_decode=overlap)
    model = model or FakeModel()
    eng = LLMEngine(model, ByteTokenizer(model.vocab_size), cfg, prefill_chunk=chunk, clock=clock or Clock())
    return eng, model


GREEDY = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)


def test_new_request_joins_running_decode_batch_next_step():
    eng, model = make_engine()
    a = eng.add_request("hello", GREEDY)
    eng.step()  # a prefills (5 tokens <= chunk) and samples its first token
    eng.step()  # a decodes
    b = eng.add_request("hi", GREEDY)
    eng.step()
    last = model.batches[-1]
    assert {c.slot for c in last.seqs} == {a.seqs[0].slot, b.seqs[0].slot}
    decode = [c for c in last.seqs if c.slot == a.seqs[0].slot][0]
    assert decode.n_new == 1 and decode.n_cached == 6  # 5 prompt tokens + 1 sampled, fed one at a time


def test_prefill_chunks_are_fixed_by_the_request_not_the_batch():
    """Chunk boundaries of a long prompt are the same alone and mixed with other traffic."""
    def chunk_trace(with_traffic: bool) -> list[tuple[int, int]]:
        eng, model = make_engine(budget=20, chunk=8, max_running=4)
        if with_traffic:
            eng.add_request("x" * 13, GREEDY)
            eng.step()
            eng.add_request("y" * 3, GREEDY)
        r = eng.add_request("z" * 29, GREEDY)
        eng.run_until_done()
        trace = []
        slot = None
        for b in model.batches:
            for c in b.seqs:
                # identify r's chunks by its tokens
                lo = b.row_starts[list(b.seqs).index(c)]
                if c.n_cached < 29 and b.token_ids[lo] == ord("z"):
                    slot = c.slot
                if c.slot == slot and c.n_cached < 29:
                    trace.append((c.n_cached, c.n_new))
        assert r.seqs[0].finish_reason is not None
        return trace

    alone, mixed = chunk_trace(False), chunk_trace(True)
    assert alone == [(0, 8), (8, 8), (16, 8), (24, 5)]
    assert mixed == alone


def test_step_token_budget_and_running_cap():
    eng, model = make_engine(slots=6, max_running=3, budget=24, chunk=10)
    for i in range(6):
        eng.add_request(chr(97 + i) * 10, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    while eng.has_work():
        eng.step()
        b = model.batches[-1]
        assert b.n_tokens <= 24
        assert len(b.seqs) <= 3
        assert eng.cache.slots_in_use <= 3
    assert eng.cache.slots_in_use == 0


def test_overload_refuses_at_once_with_retry_hint():
    eng, _ = make_engine(max_waiting=2)
    eng.add_request("a", GREEDY)
    eng.add_request("b", GREEDY)
    with pytest.raises(OverloadedError) as info:
        eng.add_request("c", GREEDY)
    assert info.value.retry_after_s == eng.engine_config.retry_after_s > 0
    eng.step()  # both admitted; the queue has room again
    eng.add_request("c", GREEDY)


def test_context_overflow_and_length_without_streaming():
    eng, _ = make_engine(max_positions=32, streaming=False)
    with pytest.raises(ContextOverflowError) as info:
        eng.add_request("a" * 33, GREEDY)
    assert (info.value.prompt_tokens, info.value.limit) == (33, 32)
    r = eng.add_request("a" * 30, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    eng.run_until_done()
    assert r.seqs[0].finish_reason.api_name == "length"
    assert r.seqs[0].total_len == 32  # stopped at the cache size


def test_streaming_past_context_keeps_going_through_the_ring():
    eng, model = make_engine(max_positions=32, streaming=True)
    r = eng.add_request("a" * 30, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    eng.run_until_done()
    assert len(r.seqs[0].output_ids) == 50
    assert max(c.n_cached for b in model.batches for c in b.seqs) == 30 + 49 - 1


def test_invalid_params_name_the_field():
    eng, _ = make_engine()
    with pytest.raises(InvalidRequestError) as info:
        eng.add_request("a", SamplingParams(top_p=0.0))
    assert info.value.violations[0].field == "top_p"
    with pytest.raises(InvalidRequestError) as info:
        eng.add_request("a", SamplingParams(logit_bias={10_000: 1.0}))
    assert info.value.violations[0].field == "logit_bias"
    with pytest.raises(InvalidRequestError):
        eng.add_request([], GREEDY)


def test_abort_during_forward_frees_slots_in_that_step():
    eng, model = make_engine()
    r = eng.add_request("hello", SamplingParams(temperature=0, max_tokens=100, n=3, ignore_eos=True))
    eng.step()
    assert eng.cache.slots_in_use == 3
    outputs = []
    model.on_forward = lambda batch: outputs.extend(eng.abort(r.request_id))  # the client cancels mid-step
    eng.step()
    assert eng.cache.slots_in_use == 0 and eng.cache.bytes_in_use_per_layer() == 0
    assert isinstance(outputs[0].error, CancelledError)
    assert not eng.has_work()


def test_abort_between_steps_frees_at_once():
    eng, _ = make_engine()
    r = eng.add_request("hello", SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    eng.step()
    eng.abort(r.request_id)
    assert eng.cache.slots_in_use == 0


def test_deadline_aborts_with_deadline_error():
    clock = Clock()
    eng, _ = make_engine(clock=clock)
    r = eng.add_request("hello", SamplingParams(temperature=0, max_tokens=100, ignore_eos=True),
                        deadline=clock.t + 5)
    eng.step()
    clock.t += 10
    outs = eng.step()
    errors = [o.error for o in outs if o.error is not None]
    assert len(errors) == 1 and isinstance(errors[0], DeadlineExceededError)
    assert r.seqs[0].finish_reason.value == "deadline"
    assert eng.cache.slots_in_use == 0


@pytest.mark.parametrize("overlap", ["off", "on"])
def test_thousand_random_submit_cancel_deadline_cycles_leave_nothing_held(overlap):
    """... also with greedy decode steps queued one ahead (overlapped decode)."""
    rnd = random.Random(1234)
    clock = Clock()
    eng, model = make_engine(slots=5, max_running=4, max_waiting=6, budget=24, chunk=8, max_positions=64,
                             clock=clock, overlap=overlap)
    model.keep_batches = False
    live: list[str] = []
    counts = {"overload": 0, "abort": 0, "deadline": 0, "done": 0}
    followed: list[bool] = []
    launch = model.launch_greedy
    model.launch_greedy = lambda batch, follow=None: followed.append(follow is not None) or launch(batch, follow)
    for i in range(1000):
        op = rnd.random()
        if op < 0.5:
            params = SamplingParams(temperature=rnd.choice([0.0, 0.8]), seed=rnd.randrange(100),
                                    max_tokens=rnd.randint(1, 12), n=rnd.randint(1, 3),
                                    stop=rnd.choice([(), ("a",), ("zz", "q")]))
            deadline = clock.t + rnd.uniform(0.5, 5) if rnd.random() < 0.3 else None
            prompt = "".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(1, 70)))
            try:
                live.append(eng.add_request(prompt, params, deadline=deadline).request_id)
            except OverloadedError:
                counts["overload"] += 1
            except ContextOverflowError:
                pass
        elif op < 0.65 and live:
            rid = live.pop(rnd.randrange(len(live)))
            if eng.abort(rid):
                counts["abort"] += 1
        else:
            if rnd.random() < 0.3:
                clock.t += rnd.uniform(0, 2)
            for out in eng.step():
                if isinstance(out.error, DeadlineExceededError):
                    counts["deadline"] += 1
                elif out.delta is not None and out.delta.usage is not None:
                    counts["done"] += 1
        stats = eng.cache.stats()
        assert stats["slots_in_use"] == len(eng.scheduler.running) <= 4
        assert stats["bytes_in_use"] <= stats["bytes_allocated"]
    clock.t += 100  # every deadline passes; the rest finish
    eng.run_until_done()
    assert all(v > 0 for v in counts.values()), counts
    assert (sum(followed) > 0) == (overlap == "on"), sum(followed)  # steps queued on the previous one's tokens
    st = eng.cache.stats()
    assert st["slots_in_use"] == 0 and st["bytes_in_use"] == 0 and eng.cache.free_slots == 5
    assert not eng.scheduler.running and not eng.scheduler.waiting and not eng._requests


def test_a_faulty_step_fails_its_requests_and_the_engine_keeps_serving():
    eng, model = make_engine()
    r = eng.add_request("boom", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))

    def explode(batch):
        model.on_forward = None
        raise RuntimeError("kernel fault")

    model.on_forward = explode
    outs = eng.step()
    assert [type(o.error) for o in outs] == [RuntimeError] and r.error is outs[0].error
    assert eng.cache.slots_in_use == 0 and not eng.has_work()
    ok = eng.generate_sync(["fine"], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    assert ok[0].finish_reason == "length" and len(ok[0].token_ids) == 3
