"""Model text → Markdown that shows line breaks the way chat UIs do.

Models write poems, addresses and step lists with single newlines; strict Markdown joins such
lines into one paragraph. `LineBreaks` turns every single newline outside fenced code into a
hard break, and works on a stream of fragments (a newline's fate is decided when it arrives,
from the line it ends), so a streamed reply and a reloaded one render the same.
"""

from __future__ import annotations

FENCES = ("```", "~~~")


class LineBreaks:
    def __init__(self) -> None:
        self.line = ""  # the current (unfinished) line
        self.in_fence = False

    def feed(self, fragment: str) -> str:
        out = []
        for ch in fragment:
            if ch != "\n":
                self.line += ch
                out.append(ch)
                continue
            stripped = self.line.strip()
            if stripped.startswith(FENCES):
                self.in_fence = not self.in_fence
                out.append("\n")
            elif self.in_fence or not stripped or self.line.endswith(("  ", "\\")):
                out.append("\n")
            else:
                out.append("  \n")
            self.line = ""
        return "".join(out)


def with_line_breaks(text: str) -> str:
    return LineBreaks().feed(text)
