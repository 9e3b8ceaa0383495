"""`openchat eval judge` against scripted judges: mapping back, parse failures, position bias,
FastChat prompt files, resume, and the full MT-bench path through report."""

import pytest

from openchat_cli.eval.judge_prompts import load_prompts
from openchat_cli.eval.judging import map_back, parse_pairwise, parse_rating
from store.catalog import open_catalog
from tests.eval.conftest import write_jsonl


def _answer(cli, scripted, path, model):
    return cli("eval", "answer", path, "-e", scripted.base_url, "-m", model, "--json").json()["run_id"]


def _judge(cli, scripted, *args, judge="fair-judge"):
    return cli(
        "eval",
        "judge",
        *args,
        "--judge-endpoint",
        scripted.base_url,
        "--judge-model",
        judge,
        "--retry-wait",
        "0.01",
        "--json",
    ).json()


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Long explanation… [[A]]", "A"),
        ("so [[B]]", "B"),
        ("[[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("A is better [[A]] and again [[A]]", "A"),
        ("[[A]] no wait [[B]]", "error"),
        ("A wins", "error"),
        ("", "error"),
        (None, "error"),
    ],
)
def test_parse_pairwise(text, verdict):
    assert parse_pairwise(text) == verdict


@pytest.mark.parametrize(
    "text, score",
    [
        ("Good.\nRating: [[8]]", 8.0),
        ("[[7.5]]", 7.5),
        ("Rating: 6", 6.0),
        ("rating: [3]", 3.0),
        ("first [[2]] then final [[9]]", 9.0),
        ("[[11]]", None),
        ("Rating: excellent", None),
        ("[[0]]", None),
        ("see [4]", 4.0),
        ("no score", None),
        ("[[8/10]]", 8.0),
    ],
)
def test_parse_rating(text, score):
    assert parse_rating(text) == score


def test_map_back():
    assert map_back("A", "AB") == "A" and map_back("A", "BA") == "B" and map_back("B", "BA") == "A"
    assert map_back("tie", "BA") == "tie" and map_back("error", "BA") == "error"


def test_mtbench_through_answer_judge_report(cli, scripted, mtbench_file, tmp_path):
    """The done criterion: an MT-bench file through answer, judge (both modes) and report."""
    long_run = _answer(cli, scripted, mtbench_file, "long-model")
    short_run = _answer(cli, scripted, mtbench_file, "short-model")
    scripted.reset()
    singles = _judge(cli, scripted, long_run, short_run, "--mode", "single")
    assert [s["judged_now"] for s in singles] == [8, 8]
    # math has a reference: its turns use the reference-guided prompts and show the reference.
    math_prompts = [r for r in scripted.requests if "What is 12 + 7?" in r["messages"][-1]["content"]]
    assert math_prompts and all("=== REFERENCE ANSWER" in r["messages"][-1]["content"] for r in math_prompts)
    assert all(r["temperature"] == 0.0 and r["max_tokens"] == 2048 for r in scripted.requests)

    scripted.reset()
    pair = _judge(cli, scripted, long_run, "--baseline", short_run, "--mode", "pairwise")[0]
    assert pair["judged_now"] == 16  # 4 questions × 2 turns × 2 orders
    cat = open_catalog()
    rows = list(cat.rows("judgments", "eval_id = ?", [pair["run_id"]]))
    assert {(r["order"], r["verdict"]) for r in rows} == {("AB", "A"), ("BA", "A")}
    assert {r["meta"]["shown"] for r in rows if r["order"] == "BA"} == {"B"}
    assert all(
        r["answer_run_id"] == long_run and r["baseline_run_id"] == short_run and r["mode"] == "pairwise" for r in rows
    )
    assert {r["prompt_name"] for r in rows} == {
        "openchat-pair",
        "openchat-pair-multi-turn",
        "openchat-pair-ref",
        "openchat-pair-ref-multi-turn",
    }
    judge_row = cat.get(pair["run_id"])
    assert judge_row["parent_id"] == long_run and judge_row["baseline_id"] == short_run
    assert judge_row["config"]["mode"] == "pairwise" and judge_row["model"] == "fair-judge"
    assert judge_row["metrics"]["win"] == 8
    # Run again without --json: nothing left to judge; the line reads the summaries stored on the runs.
    again = " ".join(
        cli(
            "eval",
            "judge",
            long_run,
            "--baseline",
            short_run,
            "--mode",
            "pairwise",
            "--judge-endpoint",
            scripted.base_url,
            "--judge-model",
            "fair-judge",
        ).stdout.split()
    )
    assert f"{pair['run_id']} completed: 16/16 judgments (0 now), parse failures 0" in again
    assert "adjusted win rate 100.0%, flipped on swap 0/8" in again
    again = " ".join(
        cli(
            "eval", "judge", long_run, "--judge-endpoint", scripted.base_url, "--judge-model", "fair-judge"
        ).stdout.split()
    )
    assert f"{singles[0]['run_id']} completed: 8/8 judgments (0 now), parse failures 0; average score 8.00" in again

    biased = _judge(cli, scripted, long_run, "--baseline", short_run, "--mode", "pairwise", judge="biased-judge")[0]

    plot = tmp_path / "report.png"
    report = cli("eval", "report", long_run, short_run, "--json", "--plot", plot).json()
    assert plot.exists() and plot.stat().st_size > 1000
    by_model = {s["model"]: s for s in report["single"]}
    assert by_model["long-model"]["turns"] == {"1": 8.0, "2": 8.0} and by_model["long-model"]["average"] == 8.0
    assert by_model["short-model"]["average"] == 4.0
    assert by_model["long-model"]["categories"] == {"coding": 8.0, "math": 8.0, "stem": 8.0, "writing": 8.0}
    (pct,) = [p for p in report["percent_of_baseline"] if p["model"] == "long-model"]
    assert pct["percent"] == pytest.approx(200.0) and pct["units"] == 8
    fair, bias = sorted(report["pairwise"], key=lambda p: p["judge_model"] != "fair-judge")
    assert (fair["win"], fair["loss"], fair["tie"]) == (8, 0, 0) and fair["adjusted_win_rate"] == 1.0
    assert fair["reliability"]["flip_rate"] == 0.0 and fair["reliability"]["longer_answer_win_rate"] == 1.0
    assert fair["reliability"]["first_position_win_rate"] == 0.5
    # An always-[[A]] judge: every pair flips on swap, so everything is a tie.
    assert bias["run_id"] == biased["run_id"]
    assert (bias["win"], bias["loss"], bias["tie"], bias["inconsistent"]) == (0, 0, 8, 8)
    assert bias["adjusted_win_rate"] == 0.5 and bias["alpaca_eval_win_rate"] == 0.5
    assert bias["reliability"]["flip_rate"] == 1.0 and bias["reliability"]["first_position_win_rate"] == 1.0
    assert bias["reliability"]["longer_answer_win_rate"] == 0.5
    assert bias["lc_win_rate"] == pytest.approx(0.5, abs=1e-6)

    text = cli("eval", "report", long_run).stdout
    for needle in (
        "MT-bench-style scores",
        "Judge reliability",
        "on swap",
        "longer answer",
        "first shown",
        "failures",
        "Percent of baseline",
        "length-",
        "AlpacaEval",
    ):
        assert needle in text


def test_messy_judge_parse_failures_are_recorded(cli, scripted, tmp_path):
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["Say hi."]},
            {"question_id": 2, "category": "writing", "turns": ["MALFORMED please."]},
            {"question_id": 3, "category": "writing", "turns": ["CONFLICT please."]},
        ],
    )
    a, b = _answer(cli, scripted, path, "long-model"), _answer(cli, scripted, path, "short-model")
    single = _judge(cli, scripted, a, judge="messy-judge")[0]
    pair = _judge(cli, scripted, a, "--baseline", b, "--mode", "pairwise", judge="messy-judge")[0]
    cat = open_catalog()
    srows = {r["question_id"]: r for r in cat.rows("judgments", "eval_id = ?", [single["run_id"]])}
    assert srows["2"]["verdict"] == "error" and srows["2"]["score"] is None and srows["2"]["parse_ok"] == 0
    assert "Rating: excellent" in srows["2"]["raw"]
    assert srows["3"]["score"] == 8.0
    prow = list(cat.rows("judgments", "eval_id = ?", [pair["run_id"]]))
    errors = [r for r in prow if r["verdict"] == "error"]
    assert {r["question_id"] for r in errors} == {"2", "3"} and len(errors) == 4
    assert all(r["parse_ok"] == 0 and r["raw"] for r in errors)
    report = cli("eval", "report", pair["run_id"], single["run_id"], "--json").json()
    p = report["pairwise"][0]
    assert p["pairs"] == 1 and p["win"] == 1
    assert p["reliability"]["parse_failures"] == 4 and p["reliability"]["parse_failure_rate"] == pytest.approx(4 / 6)
    s = report["single"][0]
    assert (
        s["parse_failures"] == 1
        and s["average"] == 8.0
        and s["reliability"]["parse_failure_rate"] == pytest.approx(1 / 3)
    )


def test_judge_retries_and_resumes(cli, scripted, mtbench_file):
    a = _answer(cli, scripted, mtbench_file, "long-model")
    scripted.reset()
    scripted.fail_next(429, 429, 500)
    out = _judge(cli, scripted, a, "-c", "1")[0]
    assert out["judged_now"] == 8 and len(scripted.requests) == 11
    cat = open_catalog()
    cat.write("delete from judgments where eval_id = ? and question_id = '81'", [out["run_id"]])
    scripted.reset()
    again = _judge(cli, scripted, a)[0]
    assert again["run_id"] == out["run_id"] and again["already"] == 6 and again["judged_now"] == 2
    assert len(scripted.requests) == 2
    fresh = _judge(cli, scripted, a, "--new")[0]
    assert fresh["run_id"] != out["run_id"] and fresh["judged_now"] == 8


def test_fastchat_prompt_file(cli, scripted, mtbench_file, tmp_path):
    """A FastChat-format prompt file: its prompts fill their slots, the rest stay built-in."""
    prompts = tmp_path / "judge_prompts.jsonl"
    write_jsonl(
        prompts,
        [
            {
                "name": "pair-test",
                "type": "pairwise",
                "category": "general",
                "output_format": "[[A]]",
                "system_prompt": "Compare two answers. End with [[A]], [[B]] or [[C]].",
                "prompt_template": "[User Question]\n{question}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}",
                "description": "test",
            },
            {
                "name": "pair-test-multi-turn",
                "type": "pairwise",
                "category": "general",
                "output_format": "[[A]]",
                "system_prompt": "Compare the second answers. End with [[A]], [[B]] or [[C]].",
                "prompt_template": "Q1 {question_1}\nA-1 {answer_a_1}\nQ2 {question_2}\nA-2 {answer_a_2}\n"
                "B-1 {answer_b_1}\nB-2 {answer_b_2}",
                "description": "test",
            },
            {
                "name": "single-test",
                "type": "single",
                "category": "general",
                "output_format": "[[rating]]",
                "system_prompt": "",
                "prompt_template": "Q {question}\nA {answer}\nRate it as Rating: [[5]].",
            },
        ],
    )
    a = _answer(cli, scripted, mtbench_file, "long-model")
    b = _answer(cli, scripted, mtbench_file, "short-model")
    scripted.reset()
    pair = _judge(cli, scripted, a, "--baseline", b, "--mode", "pairwise", "--prompts", prompts)[0]
    cat = open_catalog()
    rows = list(cat.rows("judgments", "eval_id = ?", [pair["run_id"]]))
    names = {(r["question_id"], r["turn"]): r["prompt_name"] for r in rows}
    assert names[("81", 1)] == "pair-test" and names[("81", 2)] == "pair-test-multi-turn"
    assert names[("111", 1)] == "openchat-pair-ref"  # no math prompt in the file: built-in
    assert {r["verdict"] for r in rows} == {"A"}
    multi = [
        r["messages"][1]["content"]
        for r in scripted.requests
        if r["messages"][0]["content"].startswith("Compare the second")
    ]
    assert len(multi) == 6  # turn 2 of the 3 questions without a reference, both orders
    travel = [m for m in multi if m.startswith("Q1 Write a travel blog post")]
    assert travel and all("Q2 Rewrite it starting every sentence with A." in m for m in travel)
    config = cat.get(pair["run_id"])["config"]
    assert config["prompts"]["pairwise"]["name"] == "pair-test" and config["prompts_file"] == str(prompts)

    single = _judge(cli, scripted, a, "--prompts", prompts)[0]
    srows = list(cat.rows("judgments", "eval_id = ? and turn = 1 and question_id = '81'", [single["run_id"]]))
    assert srows[0]["prompt_name"] == "single-test"
    # no system prompt in the file → only a user message was sent
    sent = [r for r in scripted.requests if r["messages"][0]["content"].startswith("Q Write a travel")]
    assert len(sent[0]["messages"]) == 1


def test_bad_prompt_file_and_arguments(cli, scripted, mtbench_file, tmp_path):
    a = _answer(cli, scripted, mtbench_file, "long-model")
    bad = tmp_path / "p.jsonl"
    bad.write_text(
        '{"name": "x", "type": "single", "prompt_template": "t"}\n{"name": "y", "type": "triple", '
        '"prompt_template": "t"}\n'
    )
    base = ["eval", "judge", a, "--judge-endpoint", scripted.base_url, "--judge-model", "fair-judge"]
    assert "p.jsonl:2: field 'type' must be 'single' or 'pairwise'" in cli(*base, "--prompts", bad, expect=2).stderr
    assert "needs --baseline" in cli(*base, "--mode", "pairwise", expect=2).stderr
    assert "against itself" in cli(*base, "--mode", "pairwise", "--baseline", a, expect=2).stderr
    assert "--mode must be" in cli(*base, "--mode", "triple", expect=2).stderr
    assert "no eval with id 'ev-ffffffff'" in cli("eval", "judge", "ev-ffffffff", *base[3:], expect=2).stderr


def test_builtin_prompts_fill_every_slot():
    prompts = load_prompts()
    assert len(prompts) == 8
    for (mode, multi, ref), p in prompts.items():
        assert p.type == mode and p.multi_turn == multi and p.reference == ref
        marker = "[[A]]" if mode == "pairwise" else "[[7]]"
        assert marker in p.prompt_template
