"""Incremental detokenizer and stop strings: streamed text never contains U+FFFD for a character split across
tokens and joins to the tokenizer's own decode; stop strings are found across any split and never emitted."""

from __future__ import annotations

import random

import pytest

from service.engine.detokenizer import IncrementalDetokenizer
from service.engine.stop import StopMatcher
from test_engine_fakes import ByteTokenizer

TEXT = "Grüße aus Köln — 東京で寿司を食べました 🍣🎉 naïve café, €5 ≠ ¥5. Ωmega!"


@pytest.fixture(scope="module")
def smollm_tokenizer():
    import os

    from service.model.registry import default_model_path
    path = default_model_path()
    if not os.path.exists(path):
        pytest.skip("default model not pulled")
    tok_mod = pytest.importorskip("service.model.tokenizer")
    from service.model.gguf_file import open_gguf
    return tok_mod.Tokenizer.from_gguf(open_gguf(path))


def stream(tokenizer, ids):
    d = IncrementalDetokenizer(tokenizer)
    pieces = [d.add(i) for i in ids]
    return pieces, d.flush()


@pytest.mark.slow  # building the real tokenizer takes several seconds on a busy 2-core machine
def test_real_tokenizer_splits_characters_and_stream_stays_clean(smollm_tokenizer):
    tok = smollm_tokenizer
    ids = tok.encode(TEXT, add_special=False)
    split = [i for i in ids if tok.token_bytes(i).decode("utf-8", errors="replace").count("\ufffd")]
    assert split, "the text should contain tokens holding part of a character"
    pieces, tail = stream(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + tail == tok.decode(ids) == TEXT


@pytest.mark.slow
def test_special_tokens_are_skipped(smollm_tokenizer):
    tok = smollm_tokenizer
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special=False)
    assert any(tok.is_special(i) for i in ids)
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == tok.decode(ids, skip_special=True)


def test_byte_tokens_every_split_point():
    tok = ByteTokenizer()
    data = TEXT.encode()
    pieces, tail = stream(tok, list(data))  # one byte per token: every multi-byte character is split
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + tail == TEXT


def test_unfinished_character_at_the_end_becomes_one_replacement():
    tok = ByteTokenizer()
    pieces, tail = stream(tok, list("ok €".encode())[:-1])
    assert "".join(pieces) == "ok " and tail == "\ufffd"


def test_stop_matcher_across_random_splits():
    rnd = random.Random(0)
    alphabet = "ab c\n"
    for _ in range(3000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30)))
        stops = tuple({"".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 4))) for _ in range(rnd.randint(1, 3))})
        cuts = sorted(rnd.sample(range(len(text) + 1), k=min(len(text) + 1, rnd.randint(0, 8))))
        parts = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        m = StopMatcher(stops)
        out, stopped = "", False
        for part in parts:
            emitted, stopped = m.feed(part)
            out += emitted
            if stopped:
                break
        if not stopped:
            out += m.flush()
        # reference: scan the finished text one character at a time; the first stop string to complete wins
        first = -1
        for end in range(1, len(text) + 1):
            done = [end - len(s) for s in stops if text[:end].endswith(s)]
            if done:
                first = min(done)
                break
        assert stopped == (first >= 0), (text, stops, parts)
        assert out == (text[:first] if first >= 0 else text), (text, stops, parts)
        assert not any(s in out for s in stops)
