"""`catalog lineage` draws a nested tree: each input under the step that used it, labelled
with how they relate ("trained-on ds-…" under the checkpoint), not a flat list."""

from __future__ import annotations


def _indent(out: str, needle: str) -> int:
    line = next(line for line in out.splitlines() if needle in line)
    return line.index(needle)


def test_ancestors_and_descendants_nest(cli, monkeypatch):
    from store.catalog import open_catalog

    monkeypatch.setenv("COLUMNS", "200")
    c = open_catalog()
    raw = c.add_dataset(name="raw", path="/raw.jsonl", format="raw", num_records=3)
    clean = c.add_dataset(name="clean", path="/clean.jsonl", format="conversations", parent_id=raw)
    tok = c.add_dataset(name="tok", path="/t.parquet", format="tokenized", parent_id=clean)
    other = c.add_dataset(name="other", path="/other.jsonl", format="conversations")

    up = cli("catalog", "lineage", tok).stdout
    assert f"derived-from {clean}" in up and f"derived-from {raw}" in up
    assert _indent(up, raw) > _indent(up, clean)  # raw sits under clean, which it made

    down = cli("catalog", "lineage", raw).stdout
    assert f"{clean} dataset clean" in down and f"(derived-from {raw})" in down
    assert _indent(down, f"{tok} dataset tok") > _indent(down, f"{clean} dataset clean")

    alone = cli("catalog", "lineage", other).stdout
    assert "nothing recorded" in alone and "nothing yet" in alone
