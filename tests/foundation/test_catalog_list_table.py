"""`catalog list` on an 80-column terminal: every id is shown whole (users copy them into the
next command), while long names and paths give way."""

from __future__ import annotations

import re

ID = re.compile(r"\b(?:ds|ck|run|ev|chat)-[0-9a-f]{8}\b")


def _fill(long: str) -> dict[str, str]:
    from store.catalog import open_catalog

    c = open_catalog()
    raw = c.add_dataset(name=f"raw-{long}", path=f"/data/{long}/raw.jsonl", format="conversations", num_records=3)
    tok = c.add_dataset(name=f"tok-{long}", path=f"/data/{long}/t.parquet", format="tokenized", parent_id=raw)
    base = c.add_checkpoint(path=f"/models/{long}/base", kind="base", name=f"base-{long}", template="openchat_3.5")
    run = c.add_run(config={}, dataset_id=tok, base_checkpoint_id=base, output_path=f"/runs/{long}")
    trained = c.add_checkpoint(path=f"/runs/{long}/final", kind="trained", run_id=run, template="openchat_3.5", step=9)
    answers = c.add_eval(kind="answer", name=f"answers-{long}", model=f"model-{long}", checkpoint_id=trained)
    graded = c.add_eval(kind="grade", name=f"graded-{long}", model=f"model-{long}", parent_id=answers)
    chat = c.add_chat(title=f"a chat about {long}", endpoint="http://127.0.0.1:1/v1", model=f"model-{long}")
    return {"raw": raw, "tok": tok, "base": base, "run": run, "trained": trained, "answers": answers,
            "graded": graded, "chat": chat}  # fmt: skip


def test_ids_are_whole_at_80_columns(cli, monkeypatch):
    ids = _fill("a-rather-long-name-that-cannot-fit-in-eighty-columns" * 2)
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("catalog", "list").stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    shown = set(ID.findall(out))
    assert set(ids.values()) <= shown, f"cut short: {set(ids.values()) - shown}"
    assert "…" in out  # the names and paths gave way instead
    for kind in ("runs", "evals", "checkpoints", "datasets", "chats"):
        assert ID.findall(cli("catalog", "list", kind).stdout)


def test_times_show_to_the_minute_and_json_keeps_them_whole(cli, monkeypatch):
    ids = _fill("x")
    monkeypatch.setenv("COLUMNS", "200")
    row = next(r for r in cli("catalog", "list", "runs", "--json").json() if r["id"] == ids["run"])
    stamp = row["created_at"]  # ISO 8601 with seconds and offset
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", stamp)
    line = next(line for line in cli("catalog", "list", "runs").stdout.splitlines() if ids["run"] in line)
    assert f"{stamp[5:10]} {stamp[11:16]}" in line and stamp not in line
