"""Incremental, UTF-8-safe detokenizer: token ids in, text out, never a U+FFFD for a character split
across tokens.

Byte-level BPE (and SentencePiece byte fallback) tokens are raw bytes; a multi-byte character may be split
over several tokens. We concatenate `tokenizer.token_bytes(id)` through Python's incremental UTF-8 decoder,
which holds back an incomplete sequence until the bytes that complete it arrive. Special tokens
(end-of-sequence, chat markers) are skipped, as `tokenizer.decode(ids, skip_special=True)` does.
"""

from __future__ import annotations

import codecs
from typing import Any


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """Text completed by this token (possibly "", when it ends mid-character)."""
        if self.tokenizer is None:
            return ""
        if self.skip_special and self.tokenizer.is_special(token_id):
            return ""
        return self._decoder.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of stream: bytes of an unfinished character become U+FFFD (the model really emitted them)."""
        return self._decoder.decode(b"", final=True)
