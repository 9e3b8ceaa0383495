"""Blocked words and unwanted phrases: built-in defaults (text files next to this module) or
files the user passes; one entry per line, '#' starts a comment."""

from __future__ import annotations

import re
from pathlib import Path

from openchat_cli.errors import OpenchatError

HERE = Path(__file__).parent
DEFAULT_BLOCKED = HERE / "blocked_words.txt"
DEFAULT_UNWANTED = HERE / "unwanted_phrases.txt"

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def load_list(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OpenchatError(f"{path}: cannot read word list ({exc.strerror or exc})") from None
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if line:
            entries.append(line.translate(_QUOTES).lower())
    return list(dict.fromkeys(entries))


class Matcher:
    """Case-insensitive search for any of several words/phrases.

    Lower-cases the text once and looks for each entry with `in` (C-speed substring search);
    whole-word entries found that way are confirmed with a word-boundary regex. Much faster than
    one big IGNORECASE alternation, which Python's regex engine tries at every position.
    """

    def __init__(self, entries: list[str], whole_words: bool = True):
        self.entries = [e.lower() for e in entries]
        self.whole_words = whole_words
        self.patterns = {e: re.compile(rf"(?<!\w){re.escape(e)}(?!\w)") for e in self.entries} if whole_words else {}

    WINDOW = 1 << 20  # characters lower-cased at a time, so a huge reply is not copied whole

    def search(self, text: str) -> str | None:
        """The first entry found in `text`, or None."""
        if not self.entries:
            return None
        if len(text) <= self.WINDOW:
            return self._search(text.translate(_QUOTES).lower(), True, True)
        # Overlapping windows: any occurrence lies inside one window with context on both sides.
        margin = max(len(e) for e in self.entries) + 8
        for start in range(0, len(text), self.WINDOW):
            a, b = max(0, start - margin), min(len(text), start + self.WINDOW + margin)
            found = self._search(text[a:b].translate(_QUOTES).lower(), a == 0, b == len(text))
            if found:
                return found
        return None

    def _search(self, low: str, at_start: bool, at_end: bool) -> str | None:
        """Search one lower-cased window; a whole-word match touching a cut edge is not trusted
        (the neighbouring window sees it with its context)."""
        for entry in self.entries:
            if entry not in low:
                continue
            if not self.whole_words:
                return entry
            for m in self.patterns[entry].finditer(low):
                if (m.start() > 0 or at_start) and (m.end() < len(low) or at_end):
                    return entry
        return None
