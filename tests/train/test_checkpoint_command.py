"""A trained checkpoint records the `openchat train …` command that made it (as its run does),
not the rank's internal `… launch OUT/run.json` line."""

from __future__ import annotations

from store.catalog import open_catalog


def test_checkpoint_records_the_train_command(cli, tiny_model_dir, color_data, tmp_path):
    out = tmp_path / "run"
    args = ("--data", color_data["small"], "--out", out, "--tokens-per-step", "512", "--stop-after", "1")
    cli("train", "--model", tiny_model_dir, *args)
    catalog = open_catalog()
    (run,) = catalog.list("runs")
    checkpoints = [c for c in catalog.list("checkpoints") if c["run_id"] == run["id"]]
    assert checkpoints, "the run saved no checkpoint"
    for ck in checkpoints:
        assert ck["command"] == run["command"]
        assert "run.json" not in ck["command"]
