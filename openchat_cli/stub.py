"""Placeholder for command groups that later issues fill in."""

from openchat_cli.errors import OpenchatError


def not_implemented(what: str) -> None:
    raise OpenchatError(f"`openchat {what}` is not implemented yet", exit_code=3)
