"""Answers from our real `openchat serve` with the tiny model, judged by the scripted judge."""

import pytest

from store.catalog import open_catalog

pytestmark = pytest.mark.slow


def test_tiny_server_answers_then_judge_and_report(cli, tiny_server, scripted, mtbench_file):
    out = cli(
        "eval", "answer", mtbench_file, "-e", tiny_server.base_url, "--max-tokens", "12", "-c", "4", "--json"
    ).json()
    assert out["status"] == "completed" and out["metrics"]["answered"] == 4
    cat = open_catalog()
    run = cat.get(out["run_id"])
    assert run["model"] == tiny_server.model  # taken from the server's /v1/models
    answers = list(cat.rows("answers", "eval_id = ?", [run["id"]]))
    assert len(answers) == 4 and all(len(a["turns"]) == 2 for a in answers)
    assert all(isinstance(t, str) for a in answers for t in a["turns"])
    # usage is summed over both turns; the second turn's prompt carries the first exchange
    assert all(a["completion_tokens"] > 0 and a["prompt_tokens"] > 0 for a in answers)
    assert out["metrics"]["completion_tokens"] <= 4 * 2 * 12

    # Re-running asks nothing.
    again = cli("eval", "answer", mtbench_file, "-e", tiny_server.base_url, "--max-tokens", "12", "--json").json()
    assert again["run_id"] == run["id"] and again["answered_now"] == 0

    other = cli(
        "eval",
        "answer",
        mtbench_file,
        "-e",
        tiny_server.base_url,
        "--max-tokens",
        "4",
        "--new",
        "--name",
        "tiny-short",
        "--json",
    ).json()["run_id"]
    judge = ["--judge-endpoint", scripted.base_url, "--judge-model", "biased-judge", "--json"]
    single = cli("eval", "judge", run["id"], *judge).json()[0]
    assert single["judged_now"] == 8
    pair = cli("eval", "judge", run["id"], "--baseline", other, "--mode", "pairwise", *judge).json()[0]
    assert pair["judged_now"] == 16
    report = cli("eval", "report", run["id"], "--json").json()
    assert report["single"][0]["average"] == 5.0
    (p,) = report["pairwise"]
    assert p["reliability"]["flip_rate"] == 1.0 and p["tie"] == 8 and p["baseline"] == "tiny-short"
