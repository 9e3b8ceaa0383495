"""`openchat data clean`: every input format, every drop reason, conditions, errors, catalog."""

from __future__ import annotations

import json

from openchat_cli.data.records import REASONS
from openchat_cli.templates import Conversation, get_template
from store.catalog import open_catalog
from tests.data.helpers import CHATGPT_MARKDOWN, CHATGPT_REPLY, read_jsonl, share_page, sharegpt, write_jsonl

Q, A = "What is the boiling point of water?", "It boils at 100 degrees Celsius at sea level."
P = "Explain photosynthesis in simple words for a child."
PHOTO = (
    "Plants take in sunlight through their leaves, drink water through their roots and breathe in "
    "carbon dioxide from the air. With the energy of the light they turn the water and the carbon "
    "dioxide into sugar, which is their food, and they give off oxygen, which we breathe."
)


def clean(cli, *args, expect=0):
    return cli("data", "clean", *map(str, args), "--json", expect=expect)


def by_id(path):
    return {r["id"]: r for r in read_jsonl(path)}


# -- formats ---------------------------------------------------------------------------------
def test_sharegpt_json_and_jsonl_round_trip(cli, data_dir):
    recs = [
        sharegpt("s1", Q, A, "And at altitude?", "Lower, because pressure is lower.", model="GPT-4"),
        {"id": "s2", "items": [{"from": "user", "value": Q}, {"from": "chatgpt", "value": A + " Yes."}]},
        {
            "id": "s3",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": Q},
                {"from": "bard", "value": A},
            ],
        },
    ]
    (data_dir / "sg.json").write_text(json.dumps(recs, indent=2))
    write_jsonl(data_dir / "sg.jsonl", recs)
    for name in ("sg.json", "sg.jsonl"):
        out = data_dir / f"{name}.out.jsonl"
        res = clean(cli, data_dir / name, "-o", out, "--no-dedup").json()
        assert res["counts"]["kept"] == 3 and res["counts"]["shapes"] == {"sharegpt": 3}
        got = by_id(out)
        assert got["s1"] == {
            "id": "s1",
            "source": name,
            "system": None,
            "condition": None,
            "model": "GPT-4",
            "messages": [
                {"role": "user", "content": Q, "weight": 0.0},
                {"role": "assistant", "content": A, "weight": 1.0},
                {"role": "user", "content": "And at altitude?", "weight": 0.0},
                {"role": "assistant", "content": "Lower, because pressure is lower.", "weight": 1.0},
            ],
        }
        assert got["s2"]["messages"][1]["content"] == A + " Yes."
        assert got["s3"]["system"] == "Be brief." and [m["role"] for m in got["s3"]["messages"]] == [
            "user",
            "assistant",
        ]


def test_html_pages_folder_round_trip(cli, data_dir):
    pages = data_dir / "pages"
    pages.mkdir()
    (pages / "p1.html").write_text(
        share_page(
            "p1",
            [
                {"from": "human", "value": "1 / 1Write an add function in Python"},
                {"from": "gpt", "value": "1 / 1" + CHATGPT_REPLY},
            ],
            model="GPT-4",
        )
    )
    (pages / "p2.htm").write_text("<html><body>no data</body></html>")
    out = data_dir / "pages.jsonl"
    res = clean(cli, pages, "-o", out).json()
    assert res["counts"]["kept"] == 1 and res["counts"]["dropped"] == {"malformed": 1}
    conv = by_id(out)["p1"]
    assert conv["model"] == "GPT-4" and conv["source"] == "pages/p1.html"
    assert conv["messages"][0]["content"] == "Write an add function in Python"
    assert conv["messages"][1]["content"] == CHATGPT_MARKDOWN
    (drop,) = read_jsonl(data_dir / "pages.dropped.jsonl")
    assert drop["file"].endswith("p2.htm") and drop["reason"] == "malformed"


def test_truncated_json_array_keeps_complete_records_and_warns(cli, data_dir):
    recs = [sharegpt(f"t{i}", f"{Q} ({i})", A) for i in range(4)]
    text = json.dumps(recs)
    cut = text.index('{"id": "t3"') + 20
    (data_dir / "cut.json").write_text(text[:cut])
    res = cli("data", "clean", data_dir / "cut.json", "-o", data_dir / "cut.out.jsonl", "--json")
    assert res.json()["counts"]["kept"] == 3
    assert res.json()["counts"]["truncated"] == {str(data_dir / "cut.json"): text.index('{"id": "t3"')}
    assert "cut off inside a record at byte" in res.stderr


def test_alpaca_dolly_openai_round_trip_and_render(cli, data_dir):
    write_jsonl(
        data_dir / "alpaca.jsonl",
        [
            {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Name a primary colour.", "input": "", "output": "Red is one."},
        ],
    )
    write_jsonl(
        data_dir / "dolly.jsonl",
        [
            {
                "instruction": "Who wrote it?",
                "context": "Hamlet was written by Shakespeare.",
                "response": "Shakespeare wrote it.",
                "category": "closed_qa",
            }
        ],
    )
    write_jsonl(
        data_dir / "openai.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": [{"type": "text", "text": Q}]},
                    {"role": "assistant", "content": A},
                ]
            }
        ],
    )
    out = data_dir / "mixed.jsonl"
    res = clean(cli, data_dir / "alpaca.jsonl", data_dir / "dolly.jsonl", data_dir / "openai.jsonl", "-o", out).json()
    assert res["counts"]["shapes"] == {"alpaca": 2, "dolly": 1, "openai": 1}
    got = read_jsonl(out)
    assert len(got) == 4
    alpaca, alpaca2, dolly, oai = got
    assert alpaca["id"] == "alpaca:1" and alpaca["messages"][0] == {
        "role": "user",
        "content": "Translate to French.",
        "input": "cat",
        "weight": 0.0,
    }
    assert "input" not in alpaca2["messages"][0]
    assert dolly["messages"][0]["input"] == "Hamlet was written by Shakespeare."
    assert oai["system"] == "You are terse." and oai["messages"][0]["content"] == Q
    text = get_template("alpaca").render(Conversation.from_dict(alpaca))
    assert "### Instruction:\nTranslate to French.\n\n### Input:\ncat\n\n### Response:\nchat</s>" in text
    assert "Who wrote it?\n\nHamlet was written" in get_template("openchat_3.5").render(Conversation.from_dict(dolly))
    # Our own output is a valid input: cleaning it again changes nothing.
    again = data_dir / "again.jsonl"
    clean(cli, out, "-o", again)
    assert read_jsonl(again) == got


def test_forced_format_and_unknown_shape(cli, data_dir):
    write_jsonl(
        data_dir / "odd.jsonl",
        [{"prompt": "x", "completion": "y"}, {"instruction": "Say hi politely.", "output": "Hello there!"}],
    )
    res = clean(cli, data_dir / "odd.jsonl", "-o", data_dir / "o.jsonl", "--format", "alpaca").json()
    assert res["counts"]["kept"] == 1 and res["counts"]["dropped"] == {"malformed": 1}
    (drop,) = read_jsonl(data_dir / "o.dropped.jsonl")
    assert drop["line"] == 1 and "field 'instruction'" in drop["detail"]


# -- every drop reason -----------------------------------------------------------------------
def test_every_drop_reason_is_counted_and_listed(cli, data_dir):
    ok = sharegpt("ok", Q, A, model="gpt-4")
    cases = {
        "malformed": {"id": "malformed", "conversations": "not a list"},
        "unknown_role": {"id": "unknown_role", "conversations": [{"from": "tool", "value": "x"}]},
        "empty": {"id": "empty", "conversations": []},
        "misplaced_system": sharegpt(
            "misplaced_system", Q, A, "Be nice", "Sure thing, I will be.", roles=("human", "gpt", "system", "gpt")
        ),
        "empty_message": sharegpt("empty_message", Q, "   "),
        "leading_assistant": sharegpt("leading_assistant", A, Q, roles=("gpt", "human")),
        "trailing_user": sharegpt("trailing_user", Q, A, "And then?"),
        "one_turn": sharegpt("one_turn", Q),
        "non_alternating": sharegpt("non_alternating", Q, "Also this question?", A, roles=("human", "human", "gpt")),
        "too_short": sharegpt("too_short", "Hi", "Yo"),
        "blocked_word": sharegpt("blocked_word", "Who trained you?", "I was trained by OpenAI, of course."),
        "no_trainable_reply": sharegpt("no_trainable_reply", Q, "As an AI language model, I cannot boil."),
        "duplicate": sharegpt("duplicate", Q.upper(), "  " + A.replace(" ", "   ")),
        "near_duplicate": sharegpt("near_duplicate", P, PHOTO.replace("sugar", "sugars")),
        "model_filtered": sharegpt("model_filtered", Q, "Different answer here.", model="gpt-3.5"),
    }
    base = sharegpt("near_base", P, PHOTO, model="gpt-4")
    records = [ok, base] + [
        c if "model" in c or k == "model_filtered" else {**c, "model": "GPT-4"} for k, c in cases.items()
    ]
    lines = [json.dumps(r) for r in records[:5]] + ["{not json"] + [json.dumps(r) for r in records[5:]]
    (data_dir / "all.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(data_dir / "other.jsonl", [sharegpt("source_filtered", "Another question here?", A, model="GPT-4")])
    cases["source_filtered"] = {"id": "source_filtered"}
    out = data_dir / "all.out.jsonl"
    res = clean(
        cli,
        data_dir / "all.jsonl",
        data_dir / "other.jsonl",
        "-o",
        out,
        "--near-dup",
        "--near-dup-threshold",
        "0.5",
        "--keep-model",
        "gpt-4*",
        "--keep-source",
        "all",
        "--no-trim-ends",
    ).json()
    dropped = read_jsonl(data_dir / "all.out.dropped.jsonl")
    reasons = {d["id"]: d["reason"] for d in dropped if d["id"]}
    for reason, case in cases.items():
        assert reasons[case["id"]] == reason, (reason, reasons.get(case["id"]))
    bad_json = [d for d in dropped if d["id"] is None]
    assert bad_json == [
        {
            "id": None,
            "file": str(data_dir / "all.jsonl"),
            "line": 6,
            "record": 6,
            "reason": "malformed",
            "detail": bad_json[0]["detail"],
        }
    ]
    counts = res["counts"]
    assert counts["kept"] == 2 and set(by_id(out)) == {"ok", "near_base"}
    assert counts["dropped"]["malformed"] == 2
    assert set(counts["dropped"]) == set(REASONS)
    assert counts["read"] == counts["kept"] + counts["dropped_total"]


def test_checks_can_be_switched_off_and_ends_trimmed(cli, data_dir):
    write_jsonl(
        data_dir / "s.jsonl",
        [
            sharegpt("lead", "Greetings from the bot!", Q, A, roles=("gpt", "human")),
            sharegpt("trail", Q, A, "Thanks, and one more?"),
            sharegpt("short", "Hi", "Yo"),
            sharegpt("dup1", Q, A),
            sharegpt("dup2", Q, A),
            sharegpt("openai", "Who is OpenAI?", "A company that builds AI models."),
            sharegpt("refuse", Q, "As an AI language model I think 100 degrees.", "Thanks!", A),
        ],
    )
    out = data_dir / "o.jsonl"
    res = clean(
        cli,
        data_dir / "s.jsonl",
        "-o",
        out,
        "--trim-ends",
        "--skip-check",
        "too_short",
        "--no-dedup",
        "--no-blocked-words",
    ).json()
    got = by_id(out)
    assert res["counts"]["dropped"] == {}
    assert [m["role"] for m in got["lead"]["messages"]] == ["user", "assistant"]
    assert [m["role"] for m in got["trail"]["messages"]] == ["user", "assistant"]
    assert res["counts"]["fixes"]["trimmed_leading_assistant"] == 1
    assert res["counts"]["fixes"]["zero_weight_replies"] == 1
    assert [m["weight"] for m in got["refuse"]["messages"]] == [0.0, 0.0, 0.0, 1.0]
    assert {"short", "dup2", "openai"} <= set(got)
    res = clean(
        cli,
        data_dir / "s.jsonl",
        "-o",
        data_dir / "o2.jsonl",
        "--no-unwanted-phrases",
        "--skip-check",
        "leading_assistant",
        "--skip-check",
        "trailing_user",
    ).json()
    got = by_id(data_dir / "o2.jsonl")
    assert got["refuse"]["messages"][1]["weight"] == 1.0 and "lead" in got and "trail" in got
    assert res["counts"]["dropped"] == {"too_short": 1, "blocked_word": 1, "duplicate": 1}


def test_custom_word_lists(cli, data_dir):
    write_jsonl(
        data_dir / "s.jsonl",
        [
            sharegpt("a", Q, "Bananas are yellow fruits."),
            sharegpt("b", Q, "I refuse to say anything useful."),
            sharegpt("c", Q, A),
        ],
    )
    (data_dir / "blocked.txt").write_text("# mine\nbanana\nbananas\n")
    (data_dir / "unwanted.txt").write_text("i refuse\n")
    out = data_dir / "o.jsonl"
    res = clean(
        cli,
        data_dir / "s.jsonl",
        "-o",
        out,
        "--blocked-words",
        data_dir / "blocked.txt",
        "--unwanted-phrases",
        data_dir / "unwanted.txt",
        "--skip-check",
        "no_trainable_reply",
    ).json()
    assert res["counts"]["dropped"] == {"blocked_word": 1}
    assert by_id(out)["b"]["messages"][1]["weight"] == 0.0


def test_conditions_and_weights_by_model_and_source(cli, data_dir):
    write_jsonl(
        data_dir / "mix.jsonl",
        [
            sharegpt("g4", Q, A, model="GPT-4"),
            sharegpt("g3", Q + " (2)", A, model="Model: Default (GPT-3.5)"),
            sharegpt("none", Q + " (3)", A),
            sharegpt("other", Q + " (4)", A, model="llama"),
        ],
    )
    out = data_dir / "o.jsonl"
    res = clean(
        cli,
        data_dir / "mix.jsonl",
        "-o",
        out,
        "--condition-from",
        "model",
        "--weight",
        "GPT4=1",
        "--weight",
        "GPT3=0.1",
        "--class",
        "llama*=Open",
    ).json()
    got = by_id(out)
    assert (got["g4"]["condition"], got["g4"]["messages"][1]["weight"]) == ("GPT4", 1.0)
    assert (got["g3"]["condition"], got["g3"]["messages"][1]["weight"]) == ("GPT3", 0.1)
    assert (got["none"]["condition"], got["none"]["messages"][1]["weight"]) == (None, 1.0)
    assert got["other"]["condition"] == "Open"
    assert res["counts"]["conditions"] == {"GPT4": 1, "GPT3": 1, "(none)": 1, "Open": 1}
    write_jsonl(data_dir / "gpt4_part.jsonl", [sharegpt("x", Q, A)])
    write_jsonl(data_dir / "gpt3_part.jsonl", [sharegpt("y", Q + "?", A)])
    clean(
        cli,
        data_dir / "gpt4_part.jsonl",
        data_dir / "gpt3_part.jsonl",
        "-o",
        data_dir / "src.jsonl",
        "--condition-from",
        "source",
        "--class",
        "gpt4*=GPT4",
        "--class",
        "gpt3*=GPT3",
        "--weight",
        "GPT3=0.1",
        "--keep-source",
        "gpt*",
    )
    got = by_id(data_dir / "src.jsonl")
    assert got["x"]["condition"] == "GPT4" and got["y"]["messages"][1]["weight"] == 0.1
    clean(cli, data_dir / "mix.jsonl", "-o", data_dir / "bad.jsonl", "--weight", "GPT4=1", expect=2)
    res = clean(
        cli,
        data_dir / "mix.jsonl",
        "-o",
        data_dir / "bad.jsonl",
        "--condition-from",
        "model",
        "--weight",
        "GPT4",
        expect=2,
    )
    assert "KEY=VALUE" in res.stderr


# -- errors, files, catalog ------------------------------------------------------------------
def test_unreadable_inputs_fail_clearly_and_leave_no_output(cli, data_dir):
    out = data_dir / "o.jsonl"
    res = clean(cli, data_dir / "missing.json", "-o", out, expect=2)
    assert "missing.json: no such file" in res.stderr and "Traceback" not in res.output
    write_jsonl(data_dir / "good.jsonl", [sharegpt("a", Q, A)])
    (data_dir / "garbage.json").write_bytes(b"\x89PNG\r\n")
    res = clean(cli, data_dir / "good.jsonl", data_dir / "garbage.json", "-o", out, expect=2)
    assert "garbage.json: not JSON" in res.stderr
    assert not out.exists() and sorted(p.name for p in data_dir.iterdir()) == ["garbage.json", "good.jsonl"]
    res = clean(cli, "ds-00000000", "-o", out, expect=2)
    assert "no dataset with id" in res.stderr
    clean(cli, data_dir / "good.jsonl", "-o", out)
    res = clean(cli, data_dir / "good.jsonl", "-o", out, expect=2)
    assert "already exists" in res.stderr
    clean(cli, data_dir / "good.jsonl", "-o", out, "--force")
    assert cli(
        "data", "clean", data_dir / "good.jsonl", "-o", out, "--force", "--skip-check", "bogus", expect=2
    ).stderr.count("choose from")


def test_catalog_registration_lineage_and_ids_as_inputs(cli, data_dir):
    write_jsonl(data_dir / "raw.jsonl", [sharegpt("a", Q, A), sharegpt("b", Q, A), {"bad": 1}])
    first = clean(cli, data_dir / "raw.jsonl", "-o", data_dir / "c1.jsonl").json()
    catalog = open_catalog()
    row = catalog.get(first["id"])
    assert row["format"] == "conversations" and row["num_records"] == 1
    assert row["counts"]["dropped"] == {"malformed": 1, "duplicate": 1}
    raw = catalog.get(row["parent_id"])
    assert raw["format"] == "raw" and raw["path"] == str((data_dir / "raw.jsonl").resolve()) and raw["num_records"] == 3
    # A catalog id works as an input, and the new dataset descends from it.
    second = clean(cli, first["id"], "-o", data_dir / "c2.jsonl").json()
    assert catalog.get(second["id"])["parent_id"] == first["id"]
    lineage = catalog.lineage(second["id"])
    assert [a["id"] for a in lineage["ancestors"]] == [first["id"], raw["id"]]
    # Cleaning the same raw file again reuses its catalog row.
    third = clean(cli, data_dir / "raw.jsonl", "-o", data_dir / "c3.jsonl").json()
    assert catalog.get(third["id"])["parent_id"] == raw["id"]


def test_human_report_shows_table_and_side_file(cli, data_dir):
    write_jsonl(data_dir / "r.jsonl", [sharegpt("a", Q, A), sharegpt("b", Q)])
    res = cli("data", "clean", data_dir / "r.jsonl", "-o", data_dir / "o.jsonl")
    flat = "".join(res.stdout.split())  # rich wraps long lines at the terminal width
    assert "one_turn" in flat and "kept1," in flat and "o.dropped.jsonl" in flat
