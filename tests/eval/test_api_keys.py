"""One API-key convention for every command that calls an endpoint: --api-key, else
$OPENCHAT_API_KEY, else $OPENAI_API_KEY; the judge's own $OPENCHAT_JUDGE_API_KEY comes first."""

from __future__ import annotations

from tests.eval.scripted import ScriptedServer

FAST = ("--retries", "0")


def _answer(cli, scripted: ScriptedServer, questions, *extra: str) -> str:
    run = cli(
        "eval",
        "answer",
        questions,
        "-e",
        scripted.base_url,
        "-m",
        "long-model",
        "--new",
        "-n",
        "1",
        "--json",
        *FAST,
        *extra,
    ).json()["run_id"]
    return run


def test_answer_and_judge_read_the_same_variables(cli, scripted, mtbench_file, monkeypatch):
    for name in ("OPENCHAT_API_KEY", "OPENAI_API_KEY", "OPENCHAT_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    run = _answer(cli, scripted, mtbench_file)
    assert set(scripted.keys) == {"sk-openai"}  # the README's promise: OPENAI_API_KEY works

    scripted.keys.clear()
    monkeypatch.setenv("OPENCHAT_API_KEY", "oc-key")
    _answer(cli, scripted, mtbench_file)
    assert set(scripted.keys) == {"oc-key"}  # OPENCHAT_API_KEY takes precedence

    scripted.keys.clear()
    _answer(cli, scripted, mtbench_file, "--api-key", "flag-key")
    assert set(scripted.keys) == {"flag-key"}  # the flag beats both

    scripted.keys.clear()
    judge = (
        "eval",
        "judge",
        run,
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        "fair-judge",
        "--new",
        "--json",
        *FAST,
    )
    cli(*judge)
    assert set(scripted.keys) == {"oc-key"}  # same variables for the judge …
    scripted.keys.clear()
    monkeypatch.setenv("OPENCHAT_JUDGE_API_KEY", "judge-key")
    cli(*judge)
    assert set(scripted.keys) == {"judge-key"}  # … unless the judge has its own


def test_every_api_key_option_reads_the_same_variables(cli):
    """Each --api-key in the command tree names the variables in the same order."""
    from openchat_cli.app import build_cli
    from openchat_cli.options import API_KEY_ENVVARS

    found = []

    def visit(command, path):
        for sub_name, sub in (getattr(command, "commands", None) or {}).items():
            visit(sub, path + (sub_name,))
        for param in command.params:
            if "--api-key" in getattr(param, "opts", ()):
                found.append((path, param.envvar))

    visit(build_cli(), ())
    assert {p for p, _ in found} >= {("eval", "answer"), ("eval", "loglik"), ("chat",)}
    assert all(envvar == API_KEY_ENVVARS for _, envvar in found), found
