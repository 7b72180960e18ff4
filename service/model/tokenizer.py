"""The model's tokenizer, built from GGUF metadata: byte-level BPE ("gpt2") and SentencePiece-style ("llama").

Both kinds run on the `tokenizers` library; this module only translates llama.cpp's reading of the GGUF
tokenizer fields into a `tokenizers.Tokenizer`, so that our ids equal llama.cpp's:

* byte-level BPE (`tokenizer.ggml.model == "gpt2"`): text is split on special tokens, then by the
  pre-tokenizer regexes llama.cpp selects from `tokenizer.ggml.pre` (applied in sequence, each splitting the
  pieces of the one before; e.g. "smollm" first isolates every digit), then byte-level mapped and merged by
  rank (`tokenizer.ggml.merges`). `ignore_merges` (llama3 family): a word that is itself a vocab piece is
  emitted whole.
* SentencePiece (`tokenizer.ggml.model == "llama"`): spaces become U+2581 "▁", a "▁" is prepended to each
  text run (at the start and after every special token, as llama.cpp does) when add_space_prefix, pieces are
  merged by score (highest-scoring merged piece first), and characters with no piece fall back to the
  byte tokens "<0xNN>". (Ties between two splits of one equal-score piece are ordered by split position; llama.cpp
  orders them by text position. No real vocab we know has such ties that matter.)

Special tokens (token type CONTROL or UNKNOWN) are recognised in text only with parse_special=True;
USER_DEFINED tokens are always recognised (llama.cpp does the same). Output text is built from
`token_bytes`, the raw bytes each token contributes, so the engine can detokenize incrementally and never
split a UTF-8 character (a character may span several tokens).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models as hf_models

from service.errors import ModelFileError, UnsupportedModelError
from service.model.gguf_file import GGUFModel, field_list

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Pieces that end a turn and so stop generation, besides eos: llama.cpp's end-of-generation list (llama-vocab.cpp).
# Like llama.cpp, a vocab piece with one of these spellings is made a CONTROL token whatever its stored type
# (so Gemma 3's USER_DEFINED "</s>" renders empty and stops generation, as it does in llama.cpp).
END_OF_TURN_PIECES = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
})

# --- pre-tokenizer regexes, as in llama.cpp's llama-vocab.cpp (llm_tokenizer_bpe) ---------------------------
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# (regexes applied in order, ignore_merges) per llama.cpp pre-tokenizer family.
_PRE_FAMILIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
    "llama3": ((_LLAMA3,), True),
    "dbrx": ((_LLAMA3,), False),
    "chatglm4": ((_LLAMA3,), False),
    "gpt2": ((_GPT2,), False),
    "smollm": ((r"\p{N}", _GPT2), False),
    "qwen2": ((_QWEN2,), False),
    "falcon": ((r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"), False),
}
_PRE_NAMES = {
    "default": "default",
    **{n: "llama3" for n in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                             "lfm2")},
    **{n: "dbrx" for n in ("dbrx", "smaug-bpe")},
    **{n: "chatglm4" for n in ("glm4", "chatglm-bpe")},
    **{n: "gpt2" for n in ("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4", "gigachat",
                           "jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "granite-docling")},
    **{n: "smollm" for n in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")},
    **{n: "qwen2" for n in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan")},
    "falcon": "falcon",
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the ByteLevel alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}
_TO_LATIN1 = str.maketrans({c: chr(b) for c, b in _BYTE_OF_CHAR.items()})


def _byte_level_bytes(piece: str) -> bytes:
    """The bytes a byte-level BPE piece stands for (characters outside the alphabet pass through as UTF-8)."""
    try:
        return piece.translate(_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for ch in piece:
        b = _BYTE_OF_CHAR.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def _spm_bytes(piece: str, token_type: int) -> bytes:
    """The bytes a SentencePiece piece stands for: "▁" is a space, "<0xNN>" byte tokens are that byte."""
    if token_type == TOKEN_BYTE and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


@dataclass(frozen=True)
class _Vocab:
    tokens: list[str]  # (vocab,) piece text per id
    types: list[int]  # (vocab,) GGUF token type per id
    scores: list[float] | None  # (vocab,) SentencePiece scores

    def piece_to_id(self) -> dict[str, int]:
        """Piece -> id; on duplicate pieces the last id wins, as in llama.cpp's token_to_id."""
        return {t: i for i, t in enumerate(self.tokens)}


class Tokenizer:
    """Text <-> token ids for one model, equal to llama.cpp's tokenization of the same GGUF."""

    def __init__(self, kind: str, vocab: _Vocab, build: Callable[[], HFTokenizer],
                 bos_id: int | None, eos_id: int | None, eos_ids: frozenset[int], add_bos: bool, add_eos: bool,
                 add_space_prefix: bool):
        self.kind = kind  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
        self._vocab = vocab
        self._build = build  # makes a fresh `tokenizers.Tokenizer` without special tokens
        self._parse_tok = build()  # recognises control + unknown + user-defined tokens in text
        _add_specials(self._parse_tok, vocab, parse_special=True)
        self._plain_tok: HFTokenizer | None = None  # recognises only user-defined tokens; built on first use
        self._plain_lock = threading.Lock()
        self.vocab_size: int = len(vocab.tokens)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix
        self._piece_ids = vocab.piece_to_id()
        self._special = [t in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED) for t in vocab.types]  # (vocab,)
        self._bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]  # (vocab,) bytes per token

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gguf(cls, model: GGUFModel) -> "Tokenizer":
        return cls.from_metadata(model.metadata, model.path)

    @classmethod
    def from_metadata(cls, md: dict[str, Any], path: str = "<gguf>") -> "Tokenizer":
        """From GGUF key/values (as `gguf_file.read_metadata` returns them), for any architecture."""
        kind = md.get("tokenizer.ggml.model")
        tokens = field_list(md, "tokenizer.ggml.tokens")
        if not tokens:
            raise ModelFileError(f"{path}: no tokenizer.ggml.tokens")
        tokens = [str(t) for t in tokens]
        types = [int(t) for t in (field_list(md, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))]
        last_id = {t: i for i, t in enumerate(tokens)}
        end_of_turn = {last_id[p] for p in END_OF_TURN_PIECES if p in last_id}
        for i in end_of_turn:
            types[i] = TOKEN_CONTROL  # llama.cpp overrides "control-looking" tokens
        if "<|tool_response>" in last_id and "</s>" in last_id:
            end_of_turn.discard(last_id["</s>"])  # llama.cpp's Gemma 4 exception: "</s>" does not end a turn there
        scores_raw = field_list(md, "tokenizer.ggml.scores")
        vocab = _Vocab(tokens, types, [float(s) for s in scores_raw] if scores_raw is not None else None)

        def opt_id(key: str) -> int | None:
            value = md.get(key)
            if value is None:
                return None
            value = int(value)
            return value if 0 <= value < len(tokens) else None

        bos_id, eos_id = opt_id("tokenizer.ggml.bos_token_id"), opt_id("tokenizer.ggml.eos_token_id")
        if kind == "gpt2":
            pre = str(md.get("tokenizer.ggml.pre", "default") or "default")
            family = _PRE_NAMES.get(pre)
            if family is None:
                raise UnsupportedModelError(f"{path}: unsupported pre-tokenizer {pre!r} "
                                            f"(supported: {', '.join(sorted(_PRE_NAMES))})")
            regexes, ignore_merges = _PRE_FAMILIES[family]
            merges_raw = field_list(md, "tokenizer.ggml.merges") or []
            build = lambda: _byte_level_bpe(vocab, merges_raw, regexes, ignore_merges)  # noqa: E731
            add_bos_default = family == "llama3"
            add_space_prefix = False
        elif kind == "llama":
            if vocab.scores is None:
                raise ModelFileError(f"{path}: SentencePiece tokenizer without tokenizer.ggml.scores")
            add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
            build = lambda: _sentencepiece(vocab, add_space_prefix)  # noqa: E731
            add_bos_default = True
        else:
            raise UnsupportedModelError(f"{path}: unsupported tokenizer model {kind!r} (supported: gpt2, llama)")

        eos_ids = {i for i in (eos_id, opt_id("tokenizer.ggml.eot_token_id"), opt_id("tokenizer.ggml.eom_token_id"))
                   if i is not None}
        eos_ids |= end_of_turn
        add_bos = bool(md.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos_id is not None
        add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False)) and eos_id is not None
        return cls(kind, vocab, build, bos_id, eos_id, frozenset(eos_ids), add_bos, add_eos,
                   add_space_prefix)

    # ------------------------------------------------------------------ interface
    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; add_special adds bos/eos as the model asks (add_bos / add_eos flags)."""
        tok = self._parse_tok if parse_special else self._plain()
        ids = tok.encode(text, add_special_tokens=False).ids if text else []
        if add_special and self.add_bos:
            ids = [self.bos_id] + ids
        if add_special and self.add_eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`. Special tokens are dropped (skip_special) or written as their piece text."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if self._special[i]:
                if not skip_special:
                    out += self._vocab.tokens[i].encode("utf-8")
                continue
            out += self._bytes[i]
        text = out.decode("utf-8", errors="replace")
        if self.kind == "llama" and self.add_space_prefix and text.startswith(" "):
            text = text[1:]  # the space the encoder prepended
        return text

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes `token_id` adds to output text (b"" for special tokens). A UTF-8 character may be
        split across tokens. For SentencePiece the leading space of a word-initial piece is included."""
        return self._bytes[int(token_id)]

    def is_special(self, token_id: int) -> bool:
        return self._special[int(token_id)]

    def token_text(self, token_id: int) -> str:
        return self._vocab.tokens[int(token_id)]

    def id_of(self, piece: str) -> int | None:
        return self._piece_ids.get(piece)

    # ------------------------------------------------------------------ helpers
    def _plain(self) -> HFTokenizer:
        with self._plain_lock:
            if self._plain_tok is None:
                tok = self._build()
                _add_specials(tok, self._vocab, parse_special=False)
                self._plain_tok = tok
            return self._plain_tok

    def _piece_bytes(self, i: int) -> bytes:
        ty, piece = self._vocab.types[i], self._vocab.tokens[i]
        if self._special[i]:
            return b""
        if ty == TOKEN_USER_DEFINED:
            return piece.encode("utf-8")  # user-defined pieces are literal text in both kinds
        if self.kind == "gpt2":
            return _byte_level_bytes(piece)
        return _spm_bytes(piece, ty)


def _byte_level_bpe(vocab: _Vocab, merges_raw: Sequence[Any], regexes: Sequence[str],
                    ignore_merges: bool) -> HFTokenizer:
    merges = []
    for m in merges_raw:
        left, sep, right = str(m).partition(" ")
        if not sep:
            raise ModelFileError(f"malformed BPE merge {m!r}")
        merges.append((left, right))
    tok = HFTokenizer(hf_models.BPE(vocab.piece_to_id(), merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tok


def _sentencepiece(vocab: _Vocab, add_space_prefix: bool) -> HFTokenizer:
    """SentencePiece-BPE as a `tokenizers` BPE: a merge (a, b) for every piece a+b whose halves are pieces,
    ranked by the merged piece's score (highest first), with byte fallback to <0xNN>."""
    assert vocab.scores is not None
    ids = vocab.piece_to_id()
    mergeable = {t for t, ty in zip(vocab.tokens, vocab.types) if ty in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
    ranked: list[tuple[float, int, int, tuple[str, str]]] = []
    for piece in mergeable:
        pid = ids[piece]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-vocab.scores[pid], pid, cut, (left, right)))
    ranked.sort()
    tok = HFTokenizer(hf_models.BPE(ids, [m for *_, m in ranked], byte_fallback=True, fuse_unk=False))
    steps = [normalizers.Replace(" ", "\u2581")]
    if add_space_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    return tok


def _add_specials(tok: HFTokenizer, vocab: _Vocab, parse_special: bool) -> None:
    """Register the pieces split out of text before BPE (llama.cpp's tokenizer_st_partition)."""
    wanted = (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED) if parse_special else (TOKEN_USER_DEFINED,)
    pieces = [t for t, ty in zip(vocab.tokens, vocab.types) if ty in wanted and t]
    if pieces:
        tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in pieces])
