"""`openchat data clean` of preference data: one hand-made file per format (tests/data/preference/,
field names as the real datasets have them), drops with reasons, bad input, mixed inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from store.catalog import open_catalog
from tests.data.helpers import read_jsonl, sharegpt, write_jsonl

FILES = Path(__file__).parent / "preference"


def clean(cli, *args, expect=0):
    return cli("data", "clean", *map(str, args), "--json", expect=expect)


def texts(pair):
    """(prompt, chosen, rejected) as (role, text) tuples, for compact comparisons."""
    return tuple([(m["role"], m["content"]) for m in pair[side]] for side in ("prompt", "chosen", "rejected"))


def run(cli, tmp_path, name, *extra):
    out = tmp_path / f"{Path(name).stem}.pairs.jsonl"
    res = clean(cli, FILES / name, "-o", out, *extra).json()
    return res, read_jsonl(out), (read_jsonl(res["dropped_path"]) if res["counts"]["dropped_total"] else [])


U, A = "user", "assistant"


def test_anthropic_hh(cli, tmp_path):
    res, pairs, dropped = run(cli, tmp_path, "hh-rlhf.jsonl")
    assert res["kind"] == "pairs" and res["counts"]["shapes"] == {"hh": 4}
    assert texts(pairs[0]) == (
        [(U, "What is the boiling point of water?")],
        [(A, "At sea level, water boils at 100 degrees Celsius.")],
        [(A, "I don't know, maybe 50 degrees.")],
    )
    # the shared turns (up to the last shared user turn) are the prompt
    assert texts(pairs[1])[0] == [(U, "Can you help me with a poem?"), (A, "Sure, what is it about?"), (U, "The sea.")]
    assert texts(pairs[1])[2] == [(A, "No.")]
    assert [m["weight"] for m in pairs[1]["prompt"]] == [0.0, 0.0, 0.0] and pairs[1]["chosen"][0]["weight"] == 1.0
    assert [(d["line"], d["reason"]) for d in dropped] == [(3, "identical_replies"), (4, "empty_message")]
    assert "chosen message 0 (assistant) is empty" in dropped[1]["detail"]


def test_rm_static(cli, tmp_path):
    res, pairs, _ = run(cli, tmp_path, "rm-static.jsonl")
    assert res["counts"]["shapes"] == {"rm-static": 2} and res["counts"]["kept"] == 2
    assert texts(pairs[0]) == (
        [(U, "How do I bake bread at home?")],
        [(A, "Mix flour, water, yeast and salt, let it rise, then bake it.")],
        [(A, "Buy it.")],
    )
    assert texts(pairs[1]) == (
        [(U, "Hi!"), (A, "Hello! How can I help?"), (U, "What is 2 + 2?")],
        [(A, "2 + 2 = 4.")],
        [(A, "5.")],
    )


def test_webgpt_higher_score_wins_and_ties_drop(cli, tmp_path):
    res, pairs, dropped = run(cli, tmp_path, "webgpt.jsonl")
    assert res["counts"]["shapes"] == {"webgpt": 2} and res["counts"]["dropped"] == {"tie": 1}
    assert texts(pairs[0]) == (
        [(U, "Why is the sky blue?")],
        [(A, ("Sunlight is scattered by the air, and blue light scatters the most, so the sky looks blue."))],
        [(A, "Because air scatters blue light more than red light [1].")],
    )
    assert dropped[0]["line"] == 2 and dropped[0]["detail"] == "score_0 = score_1 = 0"


def test_shp_labels(cli, tmp_path):
    res, pairs, _ = run(cli, tmp_path, "shp.json")
    assert res["counts"]["shapes"] == {"shp": 2}
    assert texts(pairs[0]) == (
        [(U, "How long should I rest a steak after cooking it?")],
        [(A, "About five minutes for a normal steak.")],
        [(A, "Don't rest it.")],
    )
    assert pairs[0]["id"] == "qt3nxl:hkh25sc:hkh25lp"
    assert texts(pairs[1])[1] == [(A, "Ice is less dense than liquid water because of its crystal structure.")]
    assert texts(pairs[1])[2] == [(A, "Magic.")]


def test_gpt4llm_comparison_and_ranked(cli, tmp_path):
    res, pairs, _ = run(cli, tmp_path, "gpt4llm-comparison.json")
    assert res["counts"]["shapes"] == {"gpt4llm": 1}
    assert texts(pairs[0]) == (
        [(U, "Give three tips for staying healthy.")],
        [(A, "1. Eat a balanced diet. 2. Exercise regularly. 3. Sleep well.")],
        [(A, "Eat.")],
    )
    res, pairs, dropped = run(cli, tmp_path, "gpt4llm-ranked.json")
    # three ranked responses → the two pairs with different scores; the equal-scored one is a tie
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("gpt4llm-ranked:1#0>1", "7 is a prime number.", "8 is prime."),
        ("gpt4llm-ranked:1#0>2", "7 is a prime number.", "9 is prime."),
    ]
    assert [(d["reason"], d["detail"]) for d in dropped] == [("tie", "responses 1 and 2 both scored 2")]


def test_trl_explicit_implicit_standard_and_conversational(cli, tmp_path):
    res, pairs, _ = run(cli, tmp_path, "trl.jsonl", "--min-chars", "0")
    assert res["counts"]["shapes"] == {"trl": 5} and res["counts"]["kept"] == 5
    assert texts(pairs[0]) == ([(U, "The sky is")], [(A, "blue.")], [(A, "green.")])
    # implicit prompt in plain text: the shared words
    assert texts(pairs[1]) == ([(U, "The capital of France is")], [(A, "Paris.")], [(A, "Rome.")])
    assert pairs[2]["system"] == "Be brief." and texts(pairs[2])[0] == [(U, "What color is the sky?")]
    assert texts(pairs[3]) == ([(U, "Where is the sun?")], [(A, "In the sky, far away.")], [(A, "In the sea.")])
    # UltraFeedback-binarized style: a string prompt beside full conversations
    assert texts(pairs[4]) == (
        [(U, "How many legs does a spider have?")],
        [(A, "A spider has eight legs.")],
        [(A, "Six.")],
    )


def test_forced_format_and_catalog_kind(cli, tmp_path):
    out = tmp_path / "p.jsonl"
    res = clean(cli, FILES / "shp.json", "-o", out, "--format", "shp").json()
    row = open_catalog().get(res["id"])
    assert row["format"] == "pairs" and row["num_records"] == 2 and row["meta"]["kind"] == "pairs"
    bad = clean(cli, FILES / "webgpt.jsonl", "-o", tmp_path / "q.jsonl", "--format", "shp", expect=2)
    assert "no conversation kept" in bad.stderr or "all 2 record(s) dropped" in bad.stderr


def test_bad_records_name_line_and_field(cli, data_dir):
    src = write_jsonl(
        data_dir / "bad.jsonl",
        [
            {"history": "Why?", "human_ref_A": "Because it is so.", "human_ref_B": "No idea at all.", "labels": 2},
            {
                "question": {"full_text": "Why is water wet?"},
                "answer_0": "It just is.",
                "answer_1": "Adhesion.",
                "score_0": 1.0,
            },
            {"prompt": "Hello there, assistant", "chosen": 5, "rejected": "Hi."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello, how are you?", "rejected": "\n\nUser: Hi\n\nAssistant: Yo"},
            {
                "chosen": [{"role": "user", "content": "A question about tools?"}, {"role": "tool", "content": "x"}],
                "rejected": [
                    {"role": "user", "content": "A question about tools?"},
                    {"role": "assistant", "content": "y"},
                ],
            },
            {"prompt": "What is a good name for a dog?", "chosen": "Rex is a classic name.", "rejected": "Dog."},
        ],
    )
    out = data_dir / "out.jsonl"
    res = clean(cli, src, "-o", out).json()
    assert res["counts"]["kept"] == 1
    dropped = {d["line"]: d for d in read_jsonl(data_dir / "out.dropped.jsonl")}
    assert dropped[1]["reason"] == "malformed" and "field 'labels'" in dropped[1]["detail"]
    assert "field 'score_1': missing" in dropped[2]["detail"]
    assert "field 'chosen'" in dropped[3]["detail"]
    assert dropped[4]["reason"] == "malformed" and "field 'rejected': text before the first" in dropped[4]["detail"]
    assert dropped[5]["reason"] == "unknown_role" and "chosen[1].role" in dropped[5]["detail"]
    assert all(d["file"].endswith("bad.jsonl") for d in dropped.values())


def test_dedup_blocked_words_and_weights(cli, data_dir):
    p = {
        "prompt": "Which company made this assistant?",
        "chosen": "A team of researchers built me.",
        "rejected": "OpenAI made me.",
    }
    src = write_jsonl(
        data_dir / "p.jsonl",
        [
            p,
            dict(p, chosen="  a TEAM of researchers   built me. "),  # same after case and spacing: duplicate
            {"prompt": "Name a chatbot please.", "chosen": "ChatGPT is one.", "rejected": "I cannot."},
            {"prompt": "Be nice to me please.", "chosen": "Of course, happily.", "rejected": "No."},
        ],
    )
    out = data_dir / "out.jsonl"
    res = clean(
        cli, src, "-o", out, "--condition-from", "source", "--class", "p.jsonl=GOOD", "--weight", "GOOD=0.5"
    ).json()
    # a blocked word in the rejected reply is fine (that is what to learn to avoid), in the chosen one not
    assert res["counts"]["dropped"] == {"blocked_word": 1, "duplicate": 1} and res["counts"]["kept"] == 2
    pairs = read_jsonl(out)
    assert pairs[0]["condition"] == "GOOD" and pairs[0]["chosen"][0]["weight"] == 0.5
    assert pairs[0]["prompt"][0]["weight"] == 0.0


def test_mixed_file_writes_two_outputs(cli, data_dir):
    src = write_jsonl(
        data_dir / "mixed.jsonl",
        [
            sharegpt("c1", "What is the boiling point of water?", "It boils at 100 degrees Celsius."),
            {"prompt": "The sky is", "chosen": " blue today.", "rejected": " green."},
            sharegpt("c2", "Explain gravity in one line.", "Masses attract each other."),
        ],
    )
    out = data_dir / "clean.jsonl"
    res = clean(cli, src, "-o", out).json()
    assert res["kind"] == "conversations" and res["counts"]["kinds"] == {"conversations": 2, "pairs": 1}
    assert [c["id"] for c in read_jsonl(out)] == ["c1", "c2"]
    other = res["other"]["pairs"]
    assert other["path"] == str(data_dir / "clean.pairs.jsonl") and other["records"] == 1
    assert read_jsonl(data_dir / "clean.pairs.jsonl")[0]["chosen"][0]["content"] == "blue today."
    cat = open_catalog()
    assert cat.get(other["id"])["format"] == "pairs" and cat.get(res["id"])["format"] == "conversations"
    # the second output exists already: refused without --force, nothing registered or left behind
    shutil.copy(out, data_dir / "keep.jsonl")
    again = clean(cli, src, "-o", data_dir / "second.jsonl", expect=0).json()
    assert again["other"]["pairs"]["records"] == 1
    (data_dir / "third.pairs.jsonl").write_text("taken\n")
    before = len(cat.list("datasets"))
    err = clean(cli, src, "-o", data_dir / "third.jsonl", expect=2)
    assert "third.pairs.jsonl already exists" in err.stderr and not (data_dir / "third.jsonl").exists()
    assert len(open_catalog().list("datasets")) == before
    assert not [p for p in data_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("name", sorted(p.name for p in FILES.iterdir()))
def test_every_sample_file_is_detected_as_pairs(name):
    """Every record of the sample files is a preference record (not read as a conversation)."""
    from openchat_cli.data.preference import detect_pair

    text = (FILES / name).read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines()]
    assert all(detect_pair(r) for r in records)


def test_trl_string_prompt_with_message_replies_and_no_shared_prompt():
    from openchat_cli.data.preference import from_trl
    from openchat_cli.data.records import Location, Malformed

    loc = Location("f.jsonl", 1, 1)
    (pair,) = from_trl(
        {
            "prompt": "Hi there?",
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go."}],
        },
        loc,
        "f.jsonl",
    )
    assert (pair.prompt, pair.chosen[0]["content"], pair.rejected[0]["content"]) == (
        [{"role": "user", "content": "Hi there?"}],
        "Hello.",
        "Go.",
    )
    with pytest.raises(Malformed, match="share no leading user turn"):
        from_trl(
            {
                "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}],
                "rejected": [{"role": "user", "content": "C"}, {"role": "assistant", "content": "D"}],
            },
            loc,
            "f",
        )
