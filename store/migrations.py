"""Append-only schema migrations. Never edit or reorder one that has shipped: add a new one.

Each migration is a function `mNNN_name(db)` registered with `@migration`; applied migrations
are recorded by name in the `_migrations` table, so a database at any earlier version is
brought up to date on first use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlite_utils import Database

Migration = Callable[[Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def applied(db: Database) -> list[str]:
    if "_migrations" not in db.table_names():
        return []
    return [r["name"] for r in db.query("select name from _migrations order by rowid")]


def migrate(db: Database, upto: str | None = None) -> list[str]:
    """Apply pending migrations in order (stopping after `upto`, for tests). Returns those applied.

    They run in one write transaction taken up front (BEGIN IMMEDIATE) that re-reads what is
    applied, so two processes opening a new or older catalog at once never both apply one:
    the second waits, then finds nothing left to do.
    """
    names = [fn.__name__ for fn in MIGRATIONS]
    wanted = names[: names.index(upto) + 1] if upto else names
    if set(wanted) <= set(applied(db)):
        return []
    conn = db.conn
    if conn.in_transaction:
        conn.commit()
    conn.execute("begin immediate")
    try:
        if "_migrations" not in db.table_names():
            db["_migrations"].create({"name": str, "applied_at": str}, pk="name", if_not_exists=True)
        done = set(applied(db))
        ran: list[str] = []
        for fn in MIGRATIONS:
            name = fn.__name__
            if name not in done:
                fn(db)
                db["_migrations"].insert(
                    {"name": name, "applied_at": dt.datetime.now(dt.UTC).isoformat()},
                    replace=True,
                )
                ran.append(name)
            if upto and name == upto:
                break
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return ran


@migration
def m001_core(db: Database) -> None:
    """Datasets, checkpoints, training runs and the generic lineage edges."""
    db["datasets"].create(
        {
            "id": str,
            "name": str,
            "path": str,
            "format": str,  # conversations | tokenized | questions | raw
            "content_hash": str,
            "num_records": int,
            "counts": str,  # JSON: per-reason drops, per-condition counts, token stats...
            "parent_id": str,
            "command": str,
            "meta": str,  # JSON
            "created_at": str,
        },
        pk="id",
    )
    db["checkpoints"].create(
        {
            "id": str,
            "name": str,
            "path": str,
            "kind": str,  # base | trained | merged | tokens-added
            "base_model": str,  # path or id it started from
            "template": str,
            "run_id": str,
            "dataset_id": str,
            "step": int,
            "metrics": str,  # JSON
            "command": str,
            "created_at": str,
        },
        pk="id",
    )
    db["runs"].create(
        {
            "id": str,
            "kind": str,  # train
            "status": str,  # running | completed | failed | interrupted
            "config": str,  # JSON
            "dataset_id": str,
            "base_checkpoint_id": str,
            "output_path": str,
            "loss_curve": str,  # JSON list of {step, loss, lr, tokens_per_s, packing_efficiency}
            "metrics": str,  # JSON
            "command": str,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    # Lineage: child was made from parent (relation says how). Typed columns above keep the
    # common parent; this table holds every edge so `catalog lineage` can walk both ways.
    db["links"].create(
        {"child_id": str, "parent_id": str, "relation": str, "created_at": str},
        pk=("child_id", "parent_id", "relation"),
    )
    db["links"].create_index(["parent_id"])


@migration
def m002_evals(db: Database) -> None:
    """Eval runs (answer / judge / grade), their answers and verdicts."""
    db["evals"].create(
        {
            "id": str,
            "kind": str,  # answer | judge | grade
            "name": str,
            "status": str,  # running | completed | failed | interrupted
            "questions_path": str,
            "questions_hash": str,
            "endpoint": str,
            "model": str,  # model name as served / judge model
            "checkpoint_id": str,
            "parent_id": str,  # the answer run a judge/grade run reads
            "baseline_id": str,  # pairwise baseline answer run
            "config": str,  # JSON
            "metrics": str,  # JSON
            "command": str,
            "created_at": str,
            "finished_at": str,
        },
        pk="id",
    )
    db["questions"].create(
        {
            "eval_id": str,
            "question_id": str,
            "category": str,
            "turns": str,  # JSON list of user turns
            "reference": str,  # JSON list or null
            "meta": str,  # JSON: options, label, dataset...
        },
        pk=("eval_id", "question_id"),
    )
    db["answers"].create(
        {
            "eval_id": str,
            "question_id": str,
            "model": str,
            "turns": str,  # JSON list of assistant replies, one per user turn
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "meta": str,
            "created_at": str,
        },
        pk=("eval_id", "question_id"),
    )
    db["judgments"].create(
        {
            "id": int,
            "eval_id": str,  # the judge/grade run
            "question_id": str,
            "turn": int,
            "mode": str,  # single | pairwise | exact
            "answer_id": str,  # answer run judged (single) / model A run (pairwise)
            "other_id": str,  # model B run (pairwise)
            "order": str,  # AB | BA for pairwise
            "judge_model": str,
            "prompt_name": str,
            "raw": str,  # the judge's text, always kept
            "verdict": str,  # A | B | tie | correct | incorrect | error (unparseable)
            "score": float,  # single rating 1-10, or 1/0 for exact
            "parse_ok": int,
            "meta": str,
            "created_at": str,
        },
        pk="id",
    )
    db["judgments"].create_index(["eval_id", "question_id"])


@migration
def m003_chats_requests(db: Database) -> None:
    """TUI chats and their messages; served requests logged with --log-to-catalog."""
    db["chats"].create(
        {
            "id": str,
            "title": str,
            "endpoint": str,
            "model": str,
            "system": str,
            "condition": str,
            "settings": str,  # JSON: temperature, max_tokens...
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
    )
    db["chat_messages"].create(
        {
            "id": int,
            "chat_id": str,
            "idx": int,
            "role": str,
            "content": str,
            "meta": str,
            "created_at": str,
        },
        pk="id",
    )
    db["chat_messages"].create_index(["chat_id", "idx"])
    db["requests"].create(
        {
            "id": int,
            "time": str,
            "endpoint": str,
            "model": str,
            "checkpoint_id": str,
            "request": str,  # JSON
            "output": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "status": int,
        },
        pk="id",
    )


@migration
def m004_one_verdict_per_unit(db: Database) -> None:
    """Judgment columns named by what they hold, and at most one verdict per unit.

    `answer_id` held the judged answer *run* id and `other_id` the baseline run id: renamed to
    `answer_run_id` and `baseline_run_id`. Two identical `eval judge` commands could store a unit
    twice; the duplicates are dropped (the first stored is kept) and a unique index makes the
    catalog refuse another. A unit is (run, question, turn, order, judge model); `order` and
    `judge_model` are NULL for single and exact verdicts, and NULLs never collide in a SQLite
    unique index, hence the coalesce.
    """
    db.execute("alter table judgments rename column answer_id to answer_run_id")
    db.execute("alter table judgments rename column other_id to baseline_run_id")
    db.execute(
        "delete from judgments where id not in (select min(id) from judgments group by eval_id, "
        "question_id, turn, coalesce(\"order\", ''), coalesce(judge_model, ''))"
    )
    db.execute(
        "create unique index judgments_one_per_unit on judgments (eval_id, question_id, turn, "
        "coalesce(\"order\", ''), coalesce(judge_model, ''))"
    )


@migration
def m005_unit_claims(db: Database) -> None:
    """Short-lived claims on units of work, so two processes working on one run do not both ask
    the same unit (see store/claims.py). Rows live only while a unit is being asked."""
    db["unit_claims"].create(
        {
            "eval_id": str,
            "unit": str,  # the unit's key within the run, e.g. "81|2|BA"
            "holder": str,  # random token of the claiming process
            "pid": int,
            "host": str,
            "expires_at": float,  # unix time; a claim past it is free to take
        },
        pk=("eval_id", "unit"),
    )
