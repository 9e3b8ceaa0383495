"""Model text → Markdown that shows line breaks the way chat UIs do.

Models write poems, addresses and step lists with single newlines; strict Markdown joins such
lines into one paragraph. `LineBreaks` turns every single newline outside fenced code into a
hard break, and works on a stream of fragments (a newline's fate is decided when it arrives,
from the line it ends), so a streamed reply and a reloaded one render the same.
Work is linear in the text: a line is kept as a list of fragments and joined once, when it
ends, so a 10k-character line streamed in tokens costs no more than it would in one piece.
"""

from __future__ import annotations

FENCES = ("```", "~~~")


class LineBreaks:
    def __init__(self) -> None:
        self._line: list[str] = []  # fragments of the current (unfinished) line
        self.in_fence = False

    def feed(self, fragment: str) -> str:
        out = []
        segments = fragment.split("\n")
        for segment in segments[:-1]:  # each of these ends a line
            self._line.append(segment)
            out.append(segment)
            line = "".join(self._line)
            self._line = []
            stripped = line.strip()
            if stripped.startswith(FENCES):
                self.in_fence = not self.in_fence
                out.append("\n")
            elif self.in_fence or not stripped or line.endswith(("  ", "\\")):
                out.append("\n")
            else:
                out.append("  \n")
        if segments[-1]:
            self._line.append(segments[-1])
            out.append(segments[-1])
        return "".join(out)


def with_line_breaks(text: str) -> str:
    return LineBreaks().feed(text)
