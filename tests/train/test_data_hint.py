"""`openchat train --data` given conversations JSONL (a step skipped): the error names the file
and says which command makes what --data takes; nothing is registered."""

from __future__ import annotations

import json

from store.catalog import open_catalog


def test_conversations_jsonl_as_data_points_at_data_tokenize(cli, tiny_model_dir, tmp_path):
    conv = {"id": "a", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    data = tmp_path / "clean.jsonl"
    data.write_text(json.dumps(conv) + "\n")
    err = cli("train", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "o", expect=2).stderr
    assert f"{data}: not a readable Parquet file" in err
    assert "`openchat data tokenize`" in err and "Traceback" not in err
    assert open_catalog().list("runs") == [] and not (tmp_path / "o" / "run.json").exists()
