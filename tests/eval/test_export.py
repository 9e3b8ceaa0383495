"""`openchat eval export`: FastChat and AlpacaEval files."""

import json


def _runs(cli, scripted, path):
    a = cli("eval", "answer", path, "-e", scripted.base_url, "-m", "long-model", "--json").json()["run_id"]
    b = cli("eval", "answer", path, "-e", scripted.base_url, "-m", "short-model", "--json").json()["run_id"]
    judge = ["--judge-endpoint", scripted.base_url, "--judge-model", "fair-judge", "--json"]
    pair = cli("eval", "judge", a, "--baseline", b, "--mode", "pairwise", *judge).json()[0]["run_id"]
    single = cli("eval", "judge", a, *judge).json()[0]["run_id"]
    return a, b, pair, single


def test_fastchat_exports(cli, scripted, mtbench_file, tmp_path):
    a, b, pair, single = _runs(cli, scripted, mtbench_file)
    lines = [json.loads(line) for line in cli("eval", "export", a, "--format", "fastchat").stdout.splitlines()]
    assert [row["question_id"] for row in lines] == [81, 111, 121, 131]
    assert lines[0]["model_id"] == "long-model" and len(lines[0]["choices"][0]["turns"]) == 2
    assert lines[0]["tstamp"] > 0

    out = tmp_path / "judgment.jsonl"
    said = cli("eval", "export", pair, "-f", "fastchat", "-o", out).stderr
    assert f"wrote 8 judgments of {pair} to" in said
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written beside, then renamed
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(judged) == 8 and {(j["g1_winner"], j["g2_winner"]) for j in judged} == {("model_1", "model_1")}
    assert judged[0]["model_1"] == "long-model" and judged[0]["model_2"] == "short-model"
    assert judged[0]["judge"][0] == "fair-judge" and "[[A]]" in judged[0]["g1_judgment"]
    assert "[[B]]" in judged[0]["g2_judgment"]

    singles = [json.loads(line) for line in cli("eval", "export", single).stdout.splitlines()]
    assert len(singles) == 8 and {s["score"] for s in singles} == {8.0} and {s["turn"] for s in singles} == {1, 2}


def test_alpaca_eval_exports(cli, scripted, tmp_path):
    src = tmp_path / "alpaca.json"
    src.write_text(
        json.dumps(
            [
                {"instruction": "Name a fruit.", "dataset": "helpful_base"},
                {"instruction": "Name a color.", "dataset": "koala"},
            ]
        )
    )
    a, b, pair, single = _runs(cli, scripted, src)
    outputs = json.loads(cli("eval", "export", a, "--format", "alpaca_eval").stdout)
    assert [o["instruction"] for o in outputs] == ["Name a fruit.", "Name a color."]
    assert outputs[0]["generator"] == "long-model" and outputs[0]["dataset"] == "helpful_base"
    assert outputs[0]["output"].startswith("[long-model]")
    ann = json.loads(cli("eval", "export", pair, "--format", "alpaca_eval").stdout)
    assert len(ann) == 4 and {a["preference"] for a in ann} == {2.0}
    assert ann[0]["generator_1"] == "short-model" and ann[0]["output_2"].startswith("[long-model]")
    assert "alpaca_eval annotations are pairwise" in cli("eval", "export", single, "-f", "alpaca_eval", expect=2).stderr
    assert "--format must be one of" in cli("eval", "export", a, "-f", "csv", expect=2).stderr
