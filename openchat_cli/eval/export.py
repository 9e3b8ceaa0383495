"""`openchat eval export`: answers and judgments in FastChat's and AlpacaEval's file formats.

- answer run, fastchat: ``model_answer/<model>.jsonl`` lines
  (``question_id``, ``answer_id``, ``model_id``, ``choices: [{"index": 0, "turns": […]}]``, ``tstamp``).
- answer run, alpaca_eval: a JSON list of ``instruction``, ``output``, ``generator``, ``dataset``
  (first turn only: AlpacaEval is single-turn).
- judge run, fastchat: ``model_judgment`` lines (single: ``score``, ``judgment``; pairwise:
  ``model_1`` = the judged run, ``model_2`` = the baseline, ``g1_*`` = order AB, ``g2_*`` = order BA,
  winners already mapped back to the models, as FastChat stores them).
- judge run (pairwise), alpaca_eval: annotations with ``output_1`` = baseline, ``output_2`` = the
  judged model, ``preference`` 1 (baseline) / 2 (model) / 1.5 (tie) / null (unparseable), one per
  order, ``raw_completion`` the judge's text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.runs import eval_row
from store.catalog import Catalog

FORMATS = ("fastchat", "alpaca_eval")


def _qid(value: str) -> Any:
    return int(value) if str(value).isdigit() else value


def _tstamp(text: str | None) -> float:
    try:
        return dt.datetime.fromisoformat(text).timestamp() if text else 0.0
    except ValueError:
        return 0.0


def _questions(cat: Catalog, answer_run_id: str) -> dict[str, dict[str, Any]]:
    return {r["question_id"]: r for r in cat.questions(answer_run_id)}


def _answers(cat: Catalog, answer_run_id: str) -> dict[str, dict[str, Any]]:
    return {r["question_id"]: r for r in cat.answers(answer_run_id)}


def _name(run: dict[str, Any]) -> str:
    return run.get("name") or run.get("model") or run["id"]


def _instruction(question: dict[str, Any] | None) -> str:
    if not question:
        return ""
    meta = question.get("meta") or {}
    turns = question.get("turns") or [""]
    return meta.get("instruction") or turns[0]


def export_answers(cat: Catalog, run: dict[str, Any], fmt: str) -> tuple[str, int]:
    questions = _questions(cat, run["id"])
    answers = _answers(cat, run["id"])
    order = [qid for qid in questions if qid in answers] + [qid for qid in answers if qid not in questions]
    if fmt == "fastchat":
        lines = [
            json.dumps(
                {
                    "question_id": _qid(qid),
                    "answer_id": f"{run['id']}-{qid}",
                    "model_id": _name(run),
                    "choices": [{"index": 0, "turns": answers[qid]["turns"] or []}],
                    "tstamp": _tstamp(answers[qid].get("created_at")),
                },
                ensure_ascii=False,
            )
            for qid in order
        ]
        return "\n".join(lines) + ("\n" if lines else ""), len(lines)
    records = []
    for qid in order:
        q = questions.get(qid)
        meta = (q or {}).get("meta") or {}
        records.append(
            {
                "instruction": _instruction(q),
                "output": (answers[qid]["turns"] or [""])[0],
                "generator": _name(run),
                "dataset": meta.get("dataset") or (q or {}).get("category"),
                "question_id": qid,
            }
        )
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n", len(records)


def export_judgments(cat: Catalog, run: dict[str, Any], fmt: str) -> tuple[str, int]:
    mode = (run.get("config") or {}).get("mode")
    answer_run = cat.get(run["parent_id"])
    baseline_run = cat.get(run["baseline_id"]) if run.get("baseline_id") else None
    rows = cat.judgments(run["id"])
    questions = _questions(cat, answer_run["id"])
    if fmt == "fastchat":
        out = []
        if mode == "single":
            for r in rows:
                out.append(
                    {
                        "question_id": _qid(r["question_id"]),
                        "model": _name(answer_run),
                        "judge": [r["judge_model"], r["prompt_name"]],
                        "judgment": r["raw"],
                        "score": r["score"] if r["parse_ok"] else -1,
                        "turn": r["turn"],
                        "tstamp": _tstamp(r.get("created_at")),
                    }
                )
        else:
            winner = {"A": "model_1", "B": "model_2", "tie": "tie", "error": "error"}
            pairs: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
            for r in rows:
                pairs[(r["question_id"], r["turn"])][r["order"]] = r
            for (qid, turn), orders in pairs.items():
                g1, g2 = orders.get("AB"), orders.get("BA")
                any_row = g1 or g2
                out.append(
                    {
                        "question_id": _qid(qid),
                        "model_1": _name(answer_run),
                        "model_2": _name(baseline_run),
                        "g1_winner": winner.get(g1["verdict"], "error") if g1 else None,
                        "g2_winner": winner.get(g2["verdict"], "error") if g2 else None,
                        "judge": [any_row["judge_model"], any_row["prompt_name"]],
                        "g1_judgment": g1["raw"] if g1 else None,
                        "g2_judgment": g2["raw"] if g2 else None,
                        "turn": turn,
                        "tstamp": _tstamp(any_row.get("created_at")),
                    }
                )
        lines = [json.dumps(o, ensure_ascii=False) for o in out]
        return "\n".join(lines) + ("\n" if lines else ""), len(lines)
    if mode != "pairwise":
        raise OpenchatError(
            "alpaca_eval annotations are pairwise: export a pairwise judge run, or the "
            "answer run itself (`--format alpaca_eval` on an answer run)"
        )
    answers_a, answers_b = _answers(cat, answer_run["id"]), _answers(cat, baseline_run["id"])
    preference = {"A": 2.0, "B": 1.0, "tie": 1.5}
    out = []
    for r in rows:
        qid, t = r["question_id"], r["turn"] - 1
        a = (answers_a.get(qid) or {}).get("turns") or []
        b = (answers_b.get(qid) or {}).get("turns") or []
        q = questions.get(qid)
        turns = (q or {}).get("turns") or []
        out.append(
            {
                "instruction": _instruction(q) if t == 0 else (turns[t] if t < len(turns) else ""),
                "output_1": b[t] if t < len(b) else None,
                "output_2": a[t] if t < len(a) else None,
                "generator_1": _name(baseline_run),
                "generator_2": _name(answer_run),
                "annotator": r["judge_model"],
                "preference": preference.get(r["verdict"]) if r["parse_ok"] else None,
                "raw_completion": r["raw"],
                "order": r["order"],
                "turn": r["turn"],
                "question_id": qid,
                "dataset": (q or {}).get("category"),
            }
        )
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n", len(out)


def export_run(cat: Catalog, ref: str, fmt: str) -> tuple[str, int, dict[str, Any]]:
    if fmt not in FORMATS:
        raise OpenchatError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    run = eval_row(cat, ref)
    if run["kind"] == "answer":
        text, n = export_answers(cat, run, fmt)
    elif run["kind"] == "judge":
        text, n = export_judgments(cat, run, fmt)
    else:
        raise OpenchatError(f"{run['id']} is a grade run; export its answer run {run.get('parent_id')} instead")
    return text, n, run
