"""Report numbers against hand-computed expectations, on judgments written straight to the catalog."""

import numpy as np
import pytest

from openchat_cli.eval import report as R
from store.catalog import open_catalog


def _answer_run(cat, name, questions, lengths):
    run = cat.add_eval(
        kind="answer", name=name, model=name, endpoint="http://x/v1", questions_hash="h", questions_path="/q.jsonl"
    )
    for qid, (category, turns) in questions.items():
        cat.insert(
            "questions",
            {
                "eval_id": run,
                "question_id": qid,
                "category": category,
                "turns": [f"{qid} turn {i}" for i in range(turns)],
                "meta": {"format": "mtbench"},
            },
        )
        cat.insert(
            "answers", {"eval_id": run, "question_id": qid, "model": name, "turns": ["x" * n for n in lengths[qid]]}
        )
    cat.update("evals", run, status="completed")
    return run


def _judge_run(cat, parent, mode, rows, baseline=None, judge="judge-x"):
    run = cat.add_eval(
        kind="judge", model=judge, parent_id=parent, baseline_id=baseline, endpoint="http://j/v1", config={"mode": mode}
    )
    for qid, turn, order, verdict in rows:
        parsed = verdict != "error"
        row = {
            "eval_id": run,
            "question_id": qid,
            "turn": turn,
            "mode": mode,
            "answer_run_id": parent,
            "judge_model": judge,
            "prompt_name": "p",
            "raw": f"text {verdict}",
            "parse_ok": int(parsed),
        }
        if mode == "single":
            row.update(verdict="error" if not parsed else str(verdict), score=float(verdict) if parsed else None)
        else:
            row.update(baseline_run_id=baseline, order=order, verdict=verdict, score=None)
        cat.insert("judgments", row)
    cat.update("evals", run, status="completed")
    return run


@pytest.fixture
def seeded():
    cat = open_catalog()
    qs = {f"q{i}": ("writing" if i % 2 else "math", 1) for i in range(1, 7)}
    # A longer on q1-q3, shorter on q5-q6, equal on q4.
    len_a = {"q1": [100], "q2": [100], "q3": [100], "q4": [50], "q5": [10], "q6": [10]}
    len_b = {"q1": [10], "q2": [10], "q3": [10], "q4": [50], "q5": [100], "q6": [100]}
    a = _answer_run(cat, "alpha", qs, len_a)
    b = _answer_run(cat, "beta", qs, len_b)
    pair = _judge_run(
        cat,
        a,
        "pairwise",
        [
            ("q1", 1, "AB", "A"),
            ("q1", 1, "BA", "A"),  # win
            ("q2", 1, "AB", "A"),
            ("q2", 1, "BA", "B"),  # flip → tie
            ("q3", 1, "AB", "B"),
            ("q3", 1, "BA", "B"),  # loss
            ("q4", 1, "AB", "tie"),
            ("q4", 1, "BA", "tie"),  # tie
            ("q5", 1, "AB", "error"),
            ("q5", 1, "BA", "A"),  # unparseable in one order: left out of pairs
            ("q6", 1, "AB", "A"),
            ("q6", 1, "BA", "tie"),  # flip → tie
        ],
        baseline=b,
    )
    # Single ratings on two-turn questions.
    qs2 = {"q1": ("writing", 2), "q2": ("math", 2), "q3": ("writing", 2)}
    a2 = _answer_run(cat, "alpha2", qs2, {q: [10, 10] for q in qs2})
    b2 = _answer_run(cat, "beta2", qs2, {q: [10, 10] for q in qs2})
    sa = _judge_run(
        cat,
        a2,
        "single",
        [
            ("q1", 1, None, 8),
            ("q1", 2, None, 6),
            ("q2", 1, None, 7),
            ("q2", 2, None, "error"),
            ("q3", 1, None, 5),
            ("q3", 2, None, 9),
        ],
    )
    sb = _judge_run(
        cat,
        b2,
        "single",
        [
            ("q1", 1, None, 4),
            ("q1", 2, None, 4),
            ("q2", 1, None, 7),
            ("q2", 2, None, 3),
            ("q3", 1, None, 5),
            ("q3", 2, None, "error"),
        ],
    )
    return {"cat": cat, "a": a, "b": b, "pair": pair, "a2": a2, "b2": b2, "sa": sa, "sb": sb}


def test_pairwise_numbers(cli, seeded):
    rep = cli("eval", "report", seeded["pair"], "--json").json()
    (p,) = rep["pairwise"]
    assert (p["pairs"], p["win"], p["loss"], p["tie"], p["inconsistent"]) == (5, 1, 1, 3, 2)
    assert p["win_rate"] == pytest.approx(0.2) and p["loss_rate"] == pytest.approx(0.2)
    assert p["tie_rate"] == pytest.approx(0.6)
    assert p["adjusted_win_rate"] == pytest.approx(0.5)  # (1 + 3/2) / 5
    # 11 parsed annotations worth 1,1 | 1,0 | 0,0 | .5,.5 | 1 | 1,.5
    assert p["annotations"] == 11 and p["alpaca_eval_win_rate"] == pytest.approx(6.5 / 11)
    rel = p["reliability"]
    assert rel["flip_rate"] == pytest.approx(2 / 5) and (rel["flipped"], rel["swapped_pairs"]) == (2, 5)
    assert rel["parse_failure_rate"] == pytest.approx(1 / 12) and rel["parse_failures"] == 1
    # decisive annotations: 8; the first-shown answer won 5 of them; the longer one won 3.
    assert rel["decisive"] == 8 and rel["first_position_win_rate"] == pytest.approx(5 / 8)
    assert rel["decided_with_length_difference"] == 8 and rel["longer_answer_win_rate"] == pytest.approx(3 / 8)
    lo, hi = p["adjusted_win_rate_ci"]
    assert 0 <= lo <= 0.5 <= hi <= 1
    assert p["categories"] == {"math": pytest.approx((0.5 + 0.5) / 2), "writing": pytest.approx((1 + 0 + 0.5) / 3)}
    assert p["model"] == "alpha" and p["baseline"] == "beta"
    # the same numbers were stored on the run as its metrics by the report's summary function
    assert R.judge_summary(seeded["cat"], seeded["pair"]).adjusted_win_rate == pytest.approx(0.5)


def test_single_and_percent_of_baseline(cli, seeded):
    rep = cli("eval", "report", seeded["a2"], seeded["b2"], "--baseline", seeded["b2"], "--json").json()
    sa = next(s for s in rep["single"] if s["run_id"] == seeded["sa"])
    assert sa["turns"] == {"1": pytest.approx(20 / 3), "2": pytest.approx(7.5)}
    assert sa["average"] == pytest.approx(7.0) and sa["questions"] == 3
    assert sa["parse_failures"] == 1 and sa["reliability"]["parse_failure_rate"] == pytest.approx(1 / 6)
    assert sa["categories"] == {"math": 7.0, "writing": 7.0}
    lo, hi = sa["average_ci"]
    assert lo <= 7.0 <= hi
    (pct,) = rep["percent_of_baseline"]
    # units rated in both: q1 t1, q1 t2, q2 t1, q3 t1 → (8+6+7+5) / (4+4+7+5)
    assert pct["units"] == 4 and pct["percent"] == pytest.approx(130.0)
    assert pct["model"] == "alpha2" and pct["baseline"] == "beta2"
    assert pct["percent_ci"][0] <= 130.0 <= pct["percent_ci"][1]


def test_accuracy(cli, seeded):
    cat = seeded["cat"]
    run = cat.add_eval(kind="grade", parent_id=seeded["a"], model="alpha")
    for qid, verdict in [("q1", "correct"), ("q2", "correct"), ("q3", "incorrect"), ("q4", "error")]:
        cat.insert(
            "judgments",
            {
                "eval_id": run,
                "question_id": qid,
                "turn": 1,
                "mode": "exact",
                "answer_run_id": seeded["a"],
                "verdict": verdict,
                "score": 1.0 if verdict == "correct" else 0.0,
                "parse_ok": int(verdict != "error"),
                "meta": {"method": "number"},
            },
        )
    rep = cli("eval", "report", run, "--json").json()
    (g,) = rep["grade"]
    assert (g["graded"], g["correct"], g["incorrect"], g["no_answer"]) == (4, 2, 1, 1)
    assert g["accuracy"] == 0.5 and g["no_answer_rate"] == 0.25
    assert g["categories"] == {"math": 0.5, "writing": 0.5}
    assert g["accuracy_ci"][0] <= 0.5 <= g["accuracy_ci"][1]


def test_report_all_text_and_plot(cli, seeded, tmp_path):
    out = cli("eval", "report", "--plot", tmp_path / "p.png")
    assert (tmp_path / "p.png").exists()
    assert "Judge reliability" in out.stdout and "MT-bench-style" in out.stdout
    assert "Percent of baseline" not in out.stdout  # no single runs for the pairwise runs' answers


def test_report_errors(cli, seeded):
    assert "nothing to report" not in cli("eval", "report", "--json").stdout
    fresh = seeded["cat"].add_eval(kind="answer", name="lonely")
    assert "has not been judged or graded yet" in cli("eval", "report", fresh, expect=2).stderr
    assert "no eval with id" in cli("eval", "report", "ev-0000000", expect=2).stderr


def test_cluster_bootstrap():
    assert R.cluster_bootstrap([3, 3, 3], [1, 1, 1]) == [3.0, 3.0]
    assert R.cluster_bootstrap([], []) is None
    lo, hi = R.cluster_bootstrap([1] * 50 + [0] * 50, [1] * 100)
    assert 0.39 < lo < 0.45 and 0.55 < hi < 0.61  # ≈ 0.5 ± 1.96·0.05
    # clusters move together: a question with many turns weighs by its turns
    lo, hi = R.cluster_bootstrap([4, 0], [4, 1])
    assert lo == 0.0 and hi == 1.0


def test_lc_fit_matches_scipy():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    diff = rng.normal(0, 200, 300)
    first = rng.choice([-1.0, 1.0], 300)
    y = (rng.random(300) < 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(diff / diff.std()) + 0.3 * first)))).astype(float)
    y[::7] = 0.5  # some ties
    X = R.lc_design(diff, first)
    l2 = np.array([R.LC_L2_INTERCEPT, R.LC_L2, R.LC_L2])

    def loss(w):
        z = X @ w
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(l2 * w * w)

    expected = minimize(loss, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    got = R.lc_win_rate(diff, first, y)
    c = got.coefficients
    assert [c.intercept, c.length, c.position] == pytest.approx(list(expected), abs=1e-4)
    assert got.value == pytest.approx(1 / (1 + np.exp(-expected[0])), abs=1e-6)


def test_lc_removes_a_pure_length_preference():
    # The judge always prefers the longer answer; A is longer on half the questions.
    diff = np.array([300.0, -300.0, 150.0, -150.0] * 10)
    first = np.array([1.0, 1.0, -1.0, -1.0] * 10)  # position independent of length
    y = (diff > 0).astype(float)
    fit = R.lc_win_rate(diff, first, y)
    assert fit.value == pytest.approx(0.5, abs=0.01) and fit.coefficients.length > 1
    # Equal lengths, A wins 3 of 4 in either display position: LC equals the raw rate.
    y2 = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0] * 5)
    assert R.lc_win_rate(diff * 0, first, y2).value == pytest.approx(0.75, abs=0.01)
