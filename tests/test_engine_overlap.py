"""Overlapped decode (LLMEngine with engine.overlap_decode): greedy decode steps queued one ahead on the tokens the
previous step left where the logits are. The property: the same tokens, text and finish reasons as the plain
engine, for every way a sequence can end, with requests arriving and leaving mid-chain; slots freed once the
step in flight completes. The tiny real llama on the NumPy backend (LlamaModel.launch_greedy's host fallback
runs the same engine path the CUDA backend's asynchronous one does)."""

from __future__ import annotations

import pytest

from service.config import Config, replace
from service.engine.core import LLMEngine
from service.engine.request import SamplingParams
from service.errors import CancelledError
from test_engine_fakes import EOS_ID, ByteTokenizer, tiny_llama

PROMPTS = ["The quick brown fox", "a", "Hello, world! How are you doing today, my friend?", "12345 67890 abc"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_llama(str(tmp_path_factory.mktemp("tiny")), seed=3)


class Counting:
    """The model, counting launch_greedy calls that follow a previous step (so a test knows the chain ran)."""

    def __init__(self, model):
        self.model, self.followed, self.launched = model, 0, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def launch_greedy(self, batch, follow=None):
        self.launched += 1
        self.followed += follow is not None
        return self.model.launch_greedy(batch, follow)


def engine(model, overlap: str, slots=4, max_positions=128, budget=64, chunk=8, streaming=True):
    cfg = replace(Config(), cache__slots=slots, cache__max_positions=max_positions, cache__sink_tokens=4,
                  engine__max_running=slots, engine__step_token_budget=budget, engine__overlap_decode=overlap,
                  engine__allow_streaming_past_context=streaming)
    counting = Counting(model)
    return LLMEngine(counting, ByteTokenizer(model.hp.vocab_size), cfg, prefill_chunk=chunk), counting


def outcome(results):
    return [(r.token_ids, r.text, r.finish_reason) for r in results]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True),  # ends by length
    SamplingParams(temperature=0.0, max_tokens=40, stop=("e", "o ")),  # stop strings, some mid-chain
    SamplingParams(temperature=0.0, max_tokens=3, n=2, ignore_eos=True),  # too short to chain past one step
])
def test_overlapped_decode_gives_the_plain_engines_tokens(model, params):
    plain, _ = engine(model, "off")
    want = outcome(plain.generate_sync(PROMPTS, params))
    eng, counting = engine(model, "on")
    assert outcome(eng.generate_sync(PROMPTS, params)) == want
    if params.max_tokens > 3:
        assert counting.followed > 0  # the chain did run
    assert eng.cache.slots_in_use == 0 and not eng.has_work()


def test_a_sequence_ending_mid_chain_keeps_its_slot_until_the_step_in_flight_completes(model):
    """EOS chosen at step n while step n + 1 is already queued: n + 1's row is dropped, the slot freed after it."""
    plain, _ = engine(model, "off")
    ref = plain.generate_sync(["a"], SamplingParams(temperature=0.0, max_tokens=30, ignore_eos=True))[0].token_ids
    stop_at = 6  # make the 6th generated token an end of sequence: bias it through the tokenizer's EOS set
    eng, counting = engine(model, "on")
    eng.eos_ids = frozenset({ref[stop_at - 1]}) | {EOS_ID}
    first = ref.index(ref[stop_at - 1]) + 1  # the first time that token comes (may be before stop_at)
    r = eng.add_request("a", SamplingParams(temperature=0.0, max_tokens=30))
    while eng.has_work():
        eng.step()
        assert eng.cache.slots_in_use == (0 if r.finished and eng._launched is None else 1)
    assert r.seqs[0].output_ids == ref[:first] and r.seqs[0].finish_reason.api_name == "stop"
    assert counting.followed > 0


def test_new_requests_break_the_chain_and_batches_still_equal_single_runs(model):
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    singles = [outcome(engine(model, "off")[0].generate_sync([p], params))[0] for p in PROMPTS]
    eng, counting = engine(model, "on", budget=20)
    requests = []
    for p in PROMPTS:  # each arrives while the others are decoding
        requests.append(eng.add_request(p, params))
        for _ in range(4):
            eng.step()
    eng.run_until_done()
    assert [(s.output_ids, s.text, s.finish_reason.api_name) for r in requests for s in r.seqs] == singles
    assert counting.followed > 0


def test_sampled_requests_in_the_batch_turn_overlap_off(model):
    """A batch with a sampled (temperature > 0) or penalised request runs step by step: logits to the host."""
    eng, counting = engine(model, "on")
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    eng.add_request("x", greedy)
    eng.add_request("y", SamplingParams(temperature=0.7, seed=1, max_tokens=10, ignore_eos=True))
    eng.add_request("z", SamplingParams(temperature=0.0, frequency_penalty=0.5, max_tokens=10, ignore_eos=True))
    eng.run_until_done()
    assert counting.launched == 0
    plain, _ = engine(model, "off")
    alone = plain.generate_sync(["x"], greedy)[0]
    eng2, counting2 = engine(model, "on")
    assert outcome(eng2.generate_sync(["x"], greedy)) == outcome([alone]) and counting2.followed > 0


def test_abort_mid_chain_frees_the_slot_when_the_step_in_flight_completes(model):
    eng, counting = engine(model, "on")
    r = eng.add_request("hello", SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True))
    for _ in range(4):
        eng.step()
    assert counting.followed > 0 and eng._launched is not None
    outs = eng.abort(r.request_id)
    assert isinstance(outs[0].error, CancelledError)
    assert eng.cache.slots_in_use == 1  # its step is still in flight
    eng.step()
    assert eng.cache.slots_in_use == 0 and not eng.has_work()


def test_overlap_is_automatic_only_where_the_backend_launches_asynchronously(model):
    assert engine(model, "auto")[0].overlap is False  # NumPy computes at launch: nothing to overlap
    assert engine(model, "on")[0].overlap is True
