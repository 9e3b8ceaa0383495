"""Scoring an answer run with a reward model: a judge that needs no API.

A reward model (`openchat train --method rm`, or any Hugging Face sequence-classification
checkpoint with one label and an openchat.json template) reads each conversation (the
question's turns and the run's replies, laid out by the model's template exactly as its
training pairs were) and gives one number: the score on the last token. Scores go into the
catalog as a `score` eval run (rows in `judgments`, mode `reward`), and `eval report` shows
their mean with a bootstrap CI next to judge scores.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import Question
from openchat_cli.eval.runs import eval_row, finish
from openchat_cli.eval.summaries import Interval, RewardSummary
from store.catalog import Catalog

BATCH = 8


def load_reward_model(ref: str) -> tuple[Any, Any, str, Path, str | None]:
    """(model, tokenizer, template name, path, checkpoint id) of a reward model dir or ck- id."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from openchat_cli.model_dir import load_tokenizer, read_meta, require_weights, resolve_model

    path, ck = resolve_model(ref)
    require_weights(path)
    meta = read_meta(path)
    config = AutoConfig.from_pretrained(str(path))
    if getattr(config, "num_labels", None) != 1 or not any(
        a.endswith("ForSequenceClassification") for a in (config.architectures or [])
    ):
        raise OpenchatError(
            f"{path} is not a reward model (expected a sequence-classification checkpoint with "
            "one label, as `openchat train --method rm` saves)"
        )
    if not meta.get("template"):
        raise OpenchatError(f"{path} has no openchat.json naming its template")
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    return model, load_tokenizer(path), meta["template"], path, ck or meta.get("checkpoint_id")


def conversation_ids(
    tokenizer: Any, template: str, question: Question, replies: list[str], system: str | None = None
) -> list[int]:
    """The whole exchange as the template lays it out for training."""
    from openchat_cli.templates import Conversation, Message, get_template

    messages = []
    for turn, reply in zip(question.turns, replies):
        messages += [Message("user", turn), Message("assistant", reply)]
    return get_template(template).encode(tokenizer, Conversation(messages=messages, system=system)).input_ids


def score_sequences(model: Any, sequences: list[list[int]]) -> list[float]:
    """One reward per sequence: the head on each sequence's own last token (no padding is read)."""
    import torch

    out: list[float] = []
    with torch.no_grad():
        for seq in sequences:
            logits = model(input_ids=torch.tensor([seq])).logits
            out.append(float(logits[0, 0]))
    return out


def run_score(
    cat: Catalog, answer_ref: str, rm_ref: str, on_event: Callable[[str, dict[str, Any]], None] | None = None
) -> RewardSummary:
    """Score every answer of a run with a reward model; re-scoring with the same model replaces
    the earlier scores. Returns the summary."""
    emit = on_event or (lambda kind, data: None)
    answer_run = eval_row(cat, answer_ref, "answer")
    run_a = answer_run["id"]
    model, tokenizer, template, path, ck = load_reward_model(rm_ref)
    rm_name = ck or str(path)
    questions = {r["question_id"]: Question.from_row(r) for r in cat.questions(run_a)}
    answers = [a for a in cat.answers(run_a) if a["question_id"] in questions and a.get("turns")]
    if not answers:
        raise OpenchatError(f"{run_a} has no answers to score")
    run, _ = cat.find_or_add_eval(
        lambda: cat.latest_eval("score", parent_id=run_a, model=rm_name),
        kind="score",
        name=f"{answer_run.get('name') or answer_run.get('model')} scored by {rm_name}",
        model=rm_name,
        checkpoint_id=ck,
        parent_id=run_a,
        questions_path=answer_run.get("questions_path"),
        questions_hash=answer_run.get("questions_hash"),
        config={"reward_model": str(path), "template": template},
    )
    run_id = run["id"]
    system = (answer_run.get("config") or {}).get("system")
    emit("start", {"run_id": run_id, "total": len(answers)})
    rows = []
    for done, answer in enumerate(answers, start=1):
        question = questions[answer["question_id"]]
        replies = list(answer["turns"])
        (reward,) = score_sequences(model, [conversation_ids(tokenizer, template, question, replies, system)])
        rows.append(
            {
                "eval_id": run_id,
                "question_id": question.question_id,
                "turn": len(replies),
                "mode": "reward",
                "answer_run_id": run_a,
                "judge_model": rm_name,
                "prompt_name": "reward-model",
                "raw": f"{reward:.6f}",
                "verdict": "scored",
                "score": reward,
                "parse_ok": 1,
                "meta": {"category": question.category},
            }
        )
        emit("scored", {"done": done})
    with cat.immediate():
        cat.write("delete from judgments where eval_id = ?", [run_id])
        cat.insert_many("judgments", rows)
    summary = score_summary(cat, run_id)
    finish(cat, run_id, "completed", {k: v for k, v in summary.to_dict().items() if k != "run_id"})
    return summary


def score_summary(cat: Catalog, run_id: str) -> RewardSummary:
    """Mean reward with a bootstrap CI over questions, and per category."""
    from openchat_cli.eval.report import _label, cluster_bootstrap

    run = cat.get(run_id)
    rows = cat.judgments(run_id)
    scores = [float(r["score"]) for r in rows]
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        meta = r.get("meta") or {}
        by_cat[(meta.get("category") if isinstance(meta, dict) else None) or "(none)"].append(float(r["score"]))
    return RewardSummary(
        run_id=run_id,
        status=run.get("status"),
        answer_id=run.get("parent_id"),
        model=_label(cat, run.get("parent_id")),
        reward_model=run.get("model"),
        scored=len(scores),
        mean=sum(scores) / len(scores) if scores else None,
        mean_ci=Interval.of(cluster_bootstrap(scores, [1.0] * len(scores))) if scores else None,
        categories={c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
    )
