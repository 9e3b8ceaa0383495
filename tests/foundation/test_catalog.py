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
    for table in ("datasets", "checkpoints", "runs", "evals", "answers", "judgments",
                  "questions", "chats", "chat_messages", "requests", "links"):
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
    assert applied(catalog.db) == ALL
    assert catalog.get("ds-00000001")["name"] == "old"


def test_wal_mode_and_busy_timeout(tmp_path):
    catalog = Catalog(tmp_path / "c.db")
    assert catalog.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert catalog.db.execute("pragma busy_timeout").fetchone()[0] >= 10000


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
    assert catalog.db["datasets"].count == 300
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
    assert c.db["answers"].count == 0 and c.db["links"].count == 0
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
    c.db.execute("insert into datasets (id, name, counts) values ('ds-0000abcd', 'x', '{not json')")
    c.db.conn.commit()
    assert c.get("ds-0000abcd")["counts"] == "{not json"
