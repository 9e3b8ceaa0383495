"""One exception type for user-facing failures, so every command exits the same way."""

from __future__ import annotations


class OpenchatError(Exception):
    """A problem the user can fix (bad input, missing file, mismatch); printed without a traceback.

    `exit_code`: 2 for bad input (the default), 1 for work that failed and can be re-run.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """Format a location as 'file:line field' for error messages."""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field:
        text += f" (field '{field}')"
    return text
