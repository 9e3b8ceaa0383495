"""`eval report --plot`: the image appears whole (written beside and renamed, no temp left) and
an image type matplotlib cannot write is one line naming the file, not a traceback."""

from __future__ import annotations

from store.catalog import open_catalog
from tests.eval.test_report import _answer_run


def _graded_run() -> str:
    cat = open_catalog()
    answers = _answer_run(cat, "alpha", {"q1": ("math", 1), "q2": ("writing", 1)}, {"q1": [3], "q2": [4]})
    run = cat.add_eval(kind="grade", parent_id=answers, model="alpha")
    for qid, correct in (("q1", True), ("q2", False)):
        row = {"eval_id": run, "question_id": qid, "turn": 1, "mode": "exact", "answer_run_id": answers}
        cat.insert("judgments", {**row, "verdict": "correct" if correct else "incorrect", "score": float(correct)})
    cat.update("evals", run, status="completed")
    return run


def test_plot_is_written_whole(cli, tmp_path):
    run = _graded_run()
    cli("eval", "report", run, "--plot", tmp_path / "plots" / "scores.svg")
    assert (tmp_path / "plots" / "scores.svg").read_text().lstrip().startswith("<?xml")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["scores.svg"]


def test_unknown_image_type_is_one_line(cli, tmp_path):
    run = _graded_run()
    err = cli("eval", "report", run, "--plot", tmp_path / "scores.txt", expect=2).stderr
    assert f"{tmp_path / 'scores.txt'}: cannot write a 'txt' image" in err and "png" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == [tmp_path / "openchat-home"]
