"""`openchat chat` on the command line: options, and errors before the TUI starts."""

from __future__ import annotations

from tests.tui import seed


def test_chat_help_lists_options(cli):
    out = cli("chat", "--help").stdout
    for option in (
        "--endpoint",
        "--model",
        "--api-key",
        "--system",
        "--condition",
        "--temperature",
        "--max-tokens",
        "--verdicts",
        "--chat",
    ):
        assert option in out
    assert "http://127.0.0.1:18888/v1" in out


def test_unknown_chat_id_is_a_clean_error(cli):
    result = cli("chat", "--chat", "chat-ffff", expect=2)
    assert "no chat with id 'chat-ffff'" in result.stderr
    assert "Traceback" not in result.output


def test_verdicts_of_an_answer_run_is_refused(cli, catalog, seeded):
    result = cli("chat", "--verdicts", seed.ANSWER_A, expect=2)
    assert "judge or grade run" in result.stderr
    result = cli("chat", "ds-1234", expect=2)
    assert "not a catalog id" in result.stderr or "no dataset" in result.stderr


def test_needs_a_terminal(cli, catalog, seeded):
    # Under the test runner stdout is not a tty: the command says so instead of hanging.
    for args in (["--verdicts", seed.PAIRWISE], ["--verdicts"], [seed.PAIRWISE[:6]], []):
        result = cli("chat", *args, expect=2)
        assert "needs a terminal" in result.stderr


def test_a_crash_exits_non_zero(cli, catalog, monkeypatch):
    """Whatever makes the app die, `openchat chat` must not exit 0 (a script, or tmux, would
    take it for a clean quit). The fault is injected into the chat screen's start."""
    from tui.screens.chat import ChatScreen

    def broken_mount(self) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setenv("OPENCHAT_TUI_FORCE", "1")
    monkeypatch.setenv("TEXTUAL_DRIVER", "textual.drivers.headless_driver:HeadlessDriver")
    monkeypatch.setattr(ChatScreen, "on_mount", broken_mount)
    result = cli("chat", "--endpoint", "http://127.0.0.1:9/v1", expect=None)
    assert result.exit_code not in (0, None), result.output
