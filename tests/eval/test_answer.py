"""`openchat eval answer` against the scripted endpoint: temperatures, multi-turn, resume,
retries, and failing endpoints."""

import socket

from store.catalog import open_catalog
from tests.eval.conftest import MTBENCH, write_jsonl

FAST = ["--retry-wait", "0.01"]


def _answers(run_id):
    cat = open_catalog()
    return {r["question_id"]: r for r in cat.rows("answers", "eval_id = ?", [run_id])}


def test_answer_multi_turn_and_temperatures(cli, scripted, mtbench_file):
    out = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "long-model", "--json", *FAST).json()
    run_id = out["run_id"]
    assert out["status"] == "completed" and out["answered_now"] == 4
    answers = _answers(run_id)
    assert set(answers) == {"81", "111", "121", "131"}
    turns = answers["111"]["turns"]
    assert len(turns) == 2 and turns[0].startswith("[long-model] reply 1 (saw 0")
    assert turns[1].startswith("[long-model] reply 2 (saw 1 earlier replies) to: And 12 * 7?")
    # turn 2's request carried turn 1 and the model's reply to it
    second = [
        r for r in scripted.requests if len(r["messages"]) == 3 and r["messages"][0]["content"] == "What is 12 + 7?"
    ]
    assert second and second[0]["messages"][1] == {"role": "assistant", "content": turns[0]}
    temps = {r["messages"][0]["content"]: r["temperature"] for r in scripted.requests}
    assert temps["Write a travel blog post about Hawaii."] == 0.7
    assert temps["What is 12 + 7?"] == 0.0
    assert temps["Write a function adding two numbers."] == 0.0
    assert temps["Why is the sky blue?"] == 0.1
    assert all(r["max_tokens"] == 1024 for r in scripted.requests)

    cat = open_catalog()
    row = cat.get(run_id)
    assert row["kind"] == "answer" and row["model"] == "long-model" and row["name"] == "long-model"
    assert row["endpoint"] == scripted.base_url and row["metrics"]["answered"] == 4
    assert row["metrics"]["completion_tokens"] > 0 and row["finished_at"]
    qrows = list(cat.rows("questions", "eval_id = ?", [run_id]))
    assert len(qrows) == 4 and {tuple(q["turns"]) for q in qrows} == {tuple(q["turns"]) for q in MTBENCH}
    assert answers["81"]["meta"]["temperature"] == 0.7

    # Same command again: nothing left to ask, same run.
    scripted.reset()
    again = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "long-model", "--json").json()
    assert again["run_id"] == run_id and again["answered_now"] == 0 and again["resumed"]
    assert not scripted.requests


def test_temperature_override_and_default_model(cli, scripted, mtbench_file):
    out = cli(
        "eval",
        "answer",
        mtbench_file,
        "-e",
        scripted.base_url.removesuffix("/v1"),
        "-t",
        "0.3",
        "--max-tokens",
        "64",
        "--system",
        "Be brief.",
        "--json",
    ).json()
    assert {r["temperature"] for r in scripted.requests} == {0.3}
    assert {r["max_tokens"] for r in scripted.requests} == {64}
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in scripted.requests)
    row = open_catalog().get(out["run_id"])
    assert row["model"] == "scripted-model" and row["endpoint"] == scripted.base_url


def test_resume_asks_only_missing(cli, scripted, mtbench_file):
    first = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m1", "--limit", "2", "--json").json()
    assert first["answered_now"] == 2
    scripted.reset()
    second = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m1", "--json").json()
    assert second["run_id"] == first["run_id"] and second["already"] == 2 and second["answered_now"] == 2
    asked = {r["messages"][0]["content"] for r in scripted.requests}
    assert asked == {"Write a function adding two numbers.", "Why is the sky blue?"}
    # An eval id works in place of the question file, and --new starts over.
    third = cli("eval", "answer", first["run_id"][:6], "-e", scripted.base_url, "-m", "m1", "--new", "--json").json()
    assert third["run_id"] != first["run_id"] and third["answered_now"] == 4


def test_retries_on_429_and_500(cli, scripted, mtbench_file):
    scripted.fail_next(429, 500, 429, 503)
    out = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "-c", "1", "--json", *FAST).json()
    assert out["status"] == "completed" and out["metrics"]["answered"] == 4
    assert out["metrics"]["retries"] == 4
    assert len(scripted.requests) == 8 + 4


def test_failing_endpoint_stops_and_keeps_answers(cli, scripted, mtbench_file):
    first = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--limit", "2", "--json").json()
    scripted.fail_next(*[500] * 40)
    result = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--retries", "2", *FAST, expect=1)
    assert "kept failing (500)" in result.stderr and "gave up after 3 attempts" in result.stderr
    assert "keeps the 2/4 answers" in result.stderr
    row = open_catalog().get(first["run_id"])
    assert row["status"] == "failed" and len(_answers(row["id"])) == 2


def test_unreachable_endpoint(cli, mtbench_file):
    """With -m nothing else asks the endpoint first: a quick probe refuses a dead one at once,
    and the catalog gains no failed run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{port}/v1"
    result = cli("eval", "answer", mtbench_file, "-e", url, "-m", "m", "--retries", "1", *FAST, expect=2)
    assert f"the endpoint {url} could not be reached (ConnectError" in result.stderr
    assert "Traceback" not in result.stderr
    assert open_catalog().query("select * from evals where kind = 'answer'") == []


def test_refused_request_is_reported_not_fatal(cli, scripted, mtbench_file):
    scripted.fail_next(400)
    result = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "-c", "1", expect=1)
    assert "1 questions failed" in result.stderr and "re-run the same command" in result.stderr
    scripted.reset()
    again = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--json").json()
    assert again["answered_now"] == 1 and again["status"] == "completed"


def test_choice_sets_answer_greedily(cli, scripted, tmp_path):
    path = write_jsonl(
        tmp_path / "mc.jsonl",
        [{"question": "2+2?", "options": ["3", "4"], "label": "B"}, {"question": "12+7?", "label": "19"}],
    )
    cli("eval", "answer", path, "-e", scripted.base_url, "-m", "m")
    assert {r["temperature"] for r in scripted.requests} == {0.0}


def test_needs_endpoint_and_questions(cli, mtbench_file):
    assert "--endpoint is required" in cli("eval", "answer", mtbench_file, expect=2).stderr
    assert "give a question file" in cli("eval", "answer", "-e", "http://x", expect=2).stderr


def test_checkpoint_lineage(cli, scripted, mtbench_file, tmp_path):
    cat = open_catalog()
    ck = cat.add_checkpoint(path=tmp_path, kind="trained", name="my-ck")
    scripted.health = {"status": "ok", "checkpoint_id": ck}  # what `openchat serve` reports
    out = cli("eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--json").json()
    assert cat.get(out["run_id"])["checkpoint_id"] == ck
    assert any(n["id"] == out["run_id"] for n in cat.lineage(ck)["descendants"])
    scripted.health = {"status": "ok"}
    explicit = cli(
        "eval", "answer", mtbench_file, "-e", scripted.base_url, "-m", "m", "--new", "--checkpoint", ck[:5], "--json"
    ).json()
    assert cat.get(explicit["run_id"])["checkpoint_id"] == ck
