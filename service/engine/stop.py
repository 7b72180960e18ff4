"""Stop strings: matched across token boundaries on the detokenized text, never emitted.

Text that could still be the start of a stop string is held back until the next piece decides it; the rest
is released. When a stop string appears, everything before it is released and the choice ends. With
overlapping stop strings the one that completes first wins (ties: the longer one), as a token-by-token check
would decide, so the result does not depend on how the text was split into tokens.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self.held = ""  # text withheld because it is a prefix of some stop string

    def feed(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit, stopped)."""
        if not self.stops:
            return text, False
        buf = self.held + text
        # the stop string that completes first (ties: the one starting first); nothing completed before `buf`
        found = [(i + len(s), i) for s, i in ((s, buf.find(s)) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return buf[:min(found)[1]], True
        hold = 0
        for s in self.stops:  # longest suffix of buf that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.held = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        """The choice ended for another reason: release what was held."""
        out, self.held = self.held, ""
        return out
