"""The SQLite catalog: migrations from every earlier version, concurrent writers, lineage, CLI."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from store.catalog import Catalog, CatalogError
from store.migrations import MIGRATIONS, applied, migrate

ALL = [m.__name__ for m in MIGRATIONS]


def test_migrations_on_empty_db(tmp_path):
    db = Database(tmp_path / "c.db")
    assert migrate(db) == ALL
    assert applied(db) == ALL
    assert migrate(db) == []  # idempotent
    for table in (
        "datasets",
        "checkpoints",
        "runs",
        "evals",
        "answers",
        "judgments",
        "questions",
        "chats",
        "chat_messages",
        "requests",
        "links",
    ):
        assert table in db.table_names()


@pytest.mark.parametrize("upto", ALL[:-1] or ALL)
def test_migrations_from_every_earlier_version(tmp_path, upto):
    path = tmp_path / "old.db"
    db = Database(path)
    migrate(db, upto=upto)
    done = applied(db)
    assert done == ALL[: ALL.index(upto) + 1]
    # rows written at the old version survive the upgrade
    db["datasets"].insert({"id": "ds-00000001", "name": "old", "path": "/x", "format": "conversations"})
    db.conn.commit()
    db.conn.close()
    catalog = Catalog(path)  # opening applies the rest
    assert catalog.applied_migrations() == ALL
    assert catalog.get("ds-00000001")["name"] == "old"


def test_wal_mode_and_busy_timeout(tmp_path):
    catalog = Catalog(tmp_path / "c.db")
    assert catalog.scalar("pragma journal_mode") == "wal"
    assert catalog.scalar("pragma busy_timeout") >= 10000


def _writer(path: str, tag: str, n: int) -> None:
    catalog = Catalog(path)
    chat = catalog.add_chat(title=tag, endpoint=None, model=None)
    for i in range(n):
        catalog.add_dataset(name=f"{tag}-{i}", path=f"/tmp/{tag}/{i}", format="raw")
        catalog.add_chat_message(chat, "user", f"{tag} {i}")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "c.db")
    Catalog(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, tag, 150)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    catalog = Catalog(path)
    assert catalog.count("datasets") == 300
    for chat in catalog.list("chats"):
        msgs = catalog.chat_messages(chat["id"])
        assert [m["idx"] for m in msgs] == list(range(150))


def test_ids_are_typed_and_prefixes_resolve(tmp_path):
    catalog = Catalog(tmp_path / "c.db")
    ds = catalog.add_dataset(name="d", path="/d", format="conversations")
    assert ds.startswith("ds-") and len(ds) == 11
    assert catalog.resolve(ds[:6]) == ds
    with pytest.raises(CatalogError, match="no dataset"):
        catalog.resolve("ds-ffffffffff")
    with pytest.raises(CatalogError, match="not a catalog id"):
        catalog.resolve("hello")


def test_lineage_walks_both_ways(tmp_path):
    c = Catalog(tmp_path / "c.db")
    raw = c.add_dataset(name="raw", path="/raw.jsonl", format="conversations")
    tok = c.add_dataset(name="tok", path="/tok.parquet", format="tokenized", parent_id=raw)
    base = c.add_checkpoint(path="/base", kind="base", template="openchat_3.5")
    run = c.add_run(config={}, dataset_id=tok, base_checkpoint_id=base, output_path="/out")
    ck = c.add_checkpoint(path="/out/final", kind="trained", run_id=run, dataset_id=tok, step=10)
    ev = c.add_eval(kind="answer", model="m", checkpoint_id=ck)
    up = {n["id"] for n in c.lineage(ck)["ancestors"]}
    assert up == {run, tok, raw, base}
    down = {n["id"] for n in c.lineage(raw)["descendants"]}
    assert down == {tok, run, ck, ev}


def test_remove_deletes_dependents_and_links(tmp_path):
    c = Catalog(tmp_path / "c.db")
    ev = c.add_eval(kind="answer", model="m")
    c.insert("answers", {"eval_id": ev, "question_id": "1", "turns": ["x"]})
    ds = c.add_dataset(name="d", path="/d", format="raw")
    c.link(ev, ds, "uses")
    c.remove(ev)
    assert c.count("answers") == 0 and c.count("links") == 0
    assert c.get(ds)


def test_catalog_cli_list_show_lineage_rm(cli, openchat_home):
    from store.catalog import open_catalog

    c = open_catalog()
    raw = c.add_dataset(name="raw", path="/raw.jsonl", format="conversations", num_records=3)
    tok = c.add_dataset(name="tok", path="/tok.parquet", format="tokenized", parent_id=raw)
    rows = cli("catalog", "list", "datasets", "--json").json()
    assert [r["id"] for r in rows] == [tok, raw]
    everything = cli("catalog", "list", "--json").json()
    assert set(everything) == {"datasets", "checkpoints", "runs", "evals", "chats"}
    assert cli("catalog", "show", tok, "--json").json()["parent_id"] == raw
    assert "raw" in cli("catalog", "list").stdout
    lineage = cli("catalog", "lineage", tok, "--json").json()
    assert [n["id"] for n in lineage["ancestors"]] == [raw]
    assert "made from" in cli("catalog", "lineage", tok).stdout
    cli("catalog", "rm", tok)
    assert [r["id"] for r in cli("catalog", "list", "datasets", "--json").json()] == [raw]
    bad = cli("catalog", "show", "ds-99999999", expect=2)
    assert "no dataset" in bad.stderr
    assert "unknown kind" in cli("catalog", "list", "nonsense", expect=2).stderr
    assert Path(cli("catalog", "path").stdout.strip()) == openchat_home / "catalog.db"


def test_catalog_survives_a_corrupt_json_column(tmp_path):
    c = Catalog(tmp_path / "c.db")
    c.write("insert into datasets (id, name, counts) values ('ds-0000abcd', 'x', '{not json')")
    assert c.get("ds-0000abcd")["counts"] == "{not json"


def _old_judgment(run: str, qid: str, order: str | None, verdict: str, judge: str | None = "j") -> dict:
    return {
        "eval_id": run,
        "question_id": qid,
        "turn": 1,
        "mode": "pairwise" if order else "single",
        "answer_id": "ev-a",
        "other_id": "ev-b" if order else None,
        "order": order,
        "judge_model": judge,
        "raw": verdict,
        "verdict": verdict,
        "parse_ok": 1,
    }


def test_m004_renames_run_columns_and_keeps_one_verdict_per_unit(tmp_path):
    """From m003, with the duplicates two concurrent `eval judge` commands used to store."""
    path = tmp_path / "old.db"
    db = Database(path)
    migrate(db, upto="m003_chats_requests")
    rows = [
        _old_judgment("ev-j", "1", "AB", "A"),
        _old_judgment("ev-j", "1", "AB", "B"),  # same unit twice
        _old_judgment("ev-j", "1", "BA", "A"),
        _old_judgment("ev-s", "1", None, "8"),
        _old_judgment("ev-s", "1", None, "3"),  # NULL order
        _old_judgment("ev-g", "1", None, "correct", judge=None),  # NULL order and judge
        _old_judgment("ev-g", "1", None, "incorrect", judge=None),
        _old_judgment("ev-s", "2", None, "5"),
    ]
    db["judgments"].insert_all(rows)
    db.conn.commit()
    assert db["judgments"].count == 8
    db.conn.close()

    catalog = Catalog(path)
    columns = {c["name"] for c in catalog.query("pragma table_info(judgments)")}
    assert {"answer_run_id", "baseline_run_id"} <= columns and not {"answer_id", "other_id"} & columns
    kept = catalog.query(
        'select eval_id, question_id, turn, "order", verdict, answer_run_id, baseline_run_id from judgments order by id'
    )
    assert [(r["eval_id"], r["question_id"], r["order"], r["verdict"]) for r in kept] == [
        ("ev-j", "1", "AB", "A"),
        ("ev-j", "1", "BA", "A"),
        ("ev-s", "1", None, "8"),
        ("ev-g", "1", None, "correct"),
        ("ev-s", "2", None, "5"),
    ]  # the first of each unit
    assert kept[0]["answer_run_id"] == "ev-a" and kept[0]["baseline_run_id"] == "ev-b"

    # The catalog now refuses a second verdict for a unit, NULL order and judge included.
    new = {
        k.replace("answer_id", "answer_run_id").replace("other_id", "baseline_run_id"): v
        for k, v in _old_judgment("ev-g", "1", None, "incorrect", judge=None).items()
    }
    assert catalog.insert_new("judgments", new) is False
    with pytest.raises(sqlite3.IntegrityError):
        catalog.insert("judgments", new)
    assert catalog.insert_new("judgments", {**new, "question_id": "2"}) is True
    assert catalog.count("judgments") == 6


def _find_or_add(path: str, barrier, out) -> None:
    import time

    catalog = Catalog(path)

    def find() -> dict | None:
        found = catalog.query("select * from evals where kind = 'answer' and model = 'm'")
        time.sleep(0.3)  # a slow look-up: without one transaction, every process would miss the others
        return found[0] if found else None

    barrier.wait(120)  # every process has opened the catalog: they look it up together
    row, created = catalog.find_or_add_eval(find, kind="answer", model="m")
    out.put((row["id"], created))


def test_find_or_add_eval_makes_one_run_across_processes(tmp_path):
    path = str(tmp_path / "c.db")
    Catalog(path).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    barrier = ctx.Barrier(4)  # not a start time: a loaded machine may take longer to spawn them
    procs = [ctx.Process(target=_find_or_add, args=(path, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len({run_id for run_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert Catalog(path).count("evals") == 1


def _open_at(path: str, barrier) -> None:
    barrier.wait(120)  # all four open the catalog together, however long each took to start
    Catalog(path).close()


@pytest.mark.parametrize("upto", [None, "m003_chats_requests"])
def test_processes_opening_a_new_or_old_catalog_at_once_migrate_it_once(tmp_path, upto):
    path = tmp_path / "c.db"
    if upto:
        db = Database(path)
        migrate(db, upto=upto)
        db["judgments"].insert_all([_old_judgment("ev-j", "1", "AB", "A"), _old_judgment("ev-j", "1", "AB", "B")])
        db.conn.commit()
        db.conn.close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_at, args=(str(path), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    catalog = Catalog(path)
    assert catalog.applied_migrations() == ALL
    assert catalog.count("judgments") == (1 if upto else 0)
