"""Scoring an answer run with a reward model: a judge that needs no API.

A reward model (`openchat train --method rm`, or any Hugging Face sequence-classification
checkpoint with one label and an openchat.json template) reads each conversation (the
question's turns and the run's replies, laid out by the model's template exactly as its
training pairs were) and gives one number: the score on the last token. Scores go into the
catalog as a `score` eval run (rows in `judgments`, mode `reward`), and `eval report` shows
their mean with a bootstrap CI next to judge scores.

Answers are scored in padded batches of `--batch-size` conversations, grouped by length so little
padding is computed. Pads sit on the right, and a reward model is a causal decoder: a real token
never attends to the positions after it, so no attention mask is needed (one would also push
torch's attention off its fused causal path: measured 2x slower at batch 32), and each score is
read at its own sequence's last real token. A batched score equals the one-at-a-time score (to
float rounding, tested to 1e-5).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import Question
from openchat_cli.eval.runs import eval_row, finish
from openchat_cli.eval.summaries import Interval, RewardSummary
from store.catalog import Catalog

BATCH = 8  # conversations per forward pass on a GPU (`eval score --batch-size`)
# On CPU one at a time is fastest: batches of 8 ran at 0.74x and of 32 at 0.59x the speed of
# batch 1 with one torch thread (benchmarks/bench_reward_score.py), the padding costing more than
# the larger matrix products save.
CPU_BATCH = 1
BATCH_TOKENS = 8192  # at most this many tokens, padding included, per forward pass


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
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # batches pay off most on a GPU
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).to(device).eval()
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


def score_sequences(model: Any, sequences: list[list[int]], batch_size: int = BATCH) -> list[float]:
    """One reward per sequence, in input order: the head on each sequence's own last token.

    Sequences go through the model up to `batch_size` at a time, shortest first (so each batch
    pads to a similar length) and at most BATCH_TOKENS padded tokens a batch (the long tail goes in
    small batches), right-padded (causal attention: pads after a token cannot change it); the
    score is read at the last real position."""
    import torch

    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    head = getattr(model, "score", None)
    if head is None:  # not the usual decoder + `score` layout: let the model pool, one at a time
        return [_score_one(model, seq) for seq in sequences]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = [0.0] * len(sequences)
    with torch.no_grad():
        for chunk in _batches(sequences, batch_size):
            lengths = torch.tensor([len(sequences[i]) for i in chunk])
            ids = torch.full((len(chunk), int(lengths.max())), pad, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, : lengths[row]] = torch.tensor(sequences[i], dtype=torch.long)
            hidden = model.base_model(input_ids=ids.to(device)).last_hidden_state
            last = hidden[torch.arange(len(chunk), device=device), (lengths - 1).to(device)]
            for i, value in zip(chunk, head(last)[:, 0].float().tolist()):
                out[i] = value
    return out


def _batches(sequences: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of `sequences` in batches: shortest first, at most `batch_size` sequences and
    BATCH_TOKENS padded tokens each (a sequence longer than that goes alone)."""
    batches: list[list[int]] = []
    for i in sorted(range(len(sequences)), key=lambda i: len(sequences[i])):
        current = batches[-1] if batches else None
        if current is None or len(current) >= batch_size or (len(current) + 1) * len(sequences[i]) > BATCH_TOKENS:
            batches.append([i])
        else:
            current.append(i)
    return batches


def _score_one(model: Any, seq: list[int]) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=torch.tensor([seq], device=next(model.parameters()).device)).logits[0, 0])


def run_score(
    cat: Catalog,
    answer_ref: str,
    rm_ref: str,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    batch_size: int | None = None,
) -> RewardSummary:
    """Score every answer of a run with a reward model, `batch_size` conversations per forward;
    re-scoring with the same model replaces the earlier scores. Returns the summary."""
    emit = on_event or (lambda kind, data: None)
    answer_run = eval_row(cat, answer_ref, "answer")
    run_a = answer_run["id"]
    model, tokenizer, template, path, ck = load_reward_model(rm_ref)
    if batch_size is None:
        batch_size = BATCH if next(model.parameters()).device.type != "cpu" else CPU_BATCH
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
    sequences = [
        conversation_ids(tokenizer, template, questions[a["question_id"]], a["turns"], system) for a in answers
    ]
    order = sorted(range(len(answers)), key=lambda i: len(sequences[i]))  # similar lengths share a batch
    rows = []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, reward in zip(batch, score_sequences(model, [sequences[i] for i in batch], batch_size)):
            question = questions[answers[i]["question_id"]]
            rows.append(
                {
                    "eval_id": run_id,
                    "question_id": question.question_id,
                    "turn": len(answers[i]["turns"]),
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
        emit("scored", {"done": len(rows)})
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
