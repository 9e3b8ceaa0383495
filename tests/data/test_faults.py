"""Issue #12 (data): hostile records, empty inputs, kill -9, a locked catalog, a huge reply, and
ShareGPT's split-off conversation parts. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.catalog import open_catalog
from tests.data.helpers import read_jsonl, sharegpt, write_jsonl

Q, A = "What is the boiling point of water?", "It boils at 100 degrees Celsius at sea level."
REPO = Path(__file__).resolve().parents[2]


def good(cid: str) -> dict:
    return sharegpt(cid, f"{Q} ({cid})", A)


def clean(cli, *args, expect=0):
    return cli("data", "clean", *map(str, args), "--json", expect=expect)


def drops(out: Path) -> dict[str, dict]:
    return {d["id"]: d for d in read_jsonl(out.with_name(out.name[: -len(".jsonl")] + ".dropped.jsonl"))}


def datasets() -> list[dict]:
    return open_catalog().list("datasets")


# -- item 1: one bad record drops only itself ------------------------------------------------
SURROGATE = '{"id": "sur", "conversations": [{"from": "human", "value": "bad \\ud800 text here"}, {"from": "gpt", "value": "a fine reply"}]}'
DEEP = '{"id": "deep", "conversations": [], "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
BAD_KEY = '{"id": "key", "conversations": [{"from": "human", "value": "q", "x\\udc00": 1}]}'


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_lone_surrogate_and_deep_nesting_drop_only_their_record(cli, data_dir, container):
    lines = [json.dumps(good("g1")), SURROGATE, json.dumps(good("g2")), DEEP, BAD_KEY, json.dumps(good("g3"))]
    src = data_dir / f"in.{container}"
    src.write_text("\n".join(lines) + "\n" if container == "jsonl" else "[\n" + ",\n".join(lines) + "\n]\n")
    out = data_dir / "out.jsonl"
    res = clean(cli, src, "-o", out).json()
    assert [r["id"] for r in read_jsonl(out)] == ["g1", "g2", "g3"]
    assert res["counts"]["dropped"] == {"malformed": 3} and res["counts"]["read"] == 6
    got = drops(out)
    line = 2 if container == "jsonl" else 3
    assert got["sur"] == {
        "id": "sur",
        "file": str(src),
        "line": line,
        "record": 2,
        "reason": "malformed",
        "detail": "field 'conversations[0].value': lone surrogate \\ud800 (not valid Unicode)",
    }
    deep = next(d for d in got.values() if d["record"] == 4)
    assert deep["line"] == line + 2 and deep["reason"] == "malformed"
    assert deep["detail"].startswith("field 'extra[0][0][0][0]") and "nested too deep" in deep["detail"]
    assert "field 'conversations[0].x\\udc00' (its name)" in got["key"]["detail"]


def test_tokenize_and_split_skip_the_same_bad_records_by_line(cli, data_dir, tiny_model_dir):
    conv = {
        "id": "c1",
        "messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A, "weight": 1.0}],
    }
    lines = [
        json.dumps(conv),
        SURROGATE.replace('"conversations"', '"messages"')
        .replace('"from": "human", "value"', '"role": "user", "content"')
        .replace('"from": "gpt", "value"', '"role": "assistant", "content"'),
        '{"id": "d", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}",
        json.dumps({**conv, "id": "c2"}).replace("1.0", "Infinity"),
        json.dumps({**conv, "id": "c3"}).replace("1.0", "-5"),
        json.dumps({**conv, "id": "c4"}),
    ]
    src = data_dir / "conv.jsonl"
    src.write_text("\n".join(lines) + "\n")
    res = cli("data", "tokenize", src, "--model", tiny_model_dir, "-o", data_dir / "t.parquet", "--json").json()
    assert res["stats"]["conversations"] == 2 and res["stats"]["malformed"] == 4
    errors = open_catalog().get(res["id"])["meta"]["errors"]
    assert errors[0] == f"{src}:2: field 'messages[0].content': lone surrogate \\ud800 (not valid Unicode)"
    assert errors[1].startswith(f"{src}:3: field 'messages") and "nested too deep" in errors[1]
    assert errors[2] == f"{src}:4: field 'messages[1].weight': must be a finite number, 0 or more, found inf"
    assert errors[3] == f"{src}:5: field 'messages[1].weight': must be a finite number, 0 or more, found -5"
    split = cli("data", "split", src, "--eval", "0.5", "--json").json()
    assert split["train"]["records"] + split["eval"]["records"] == 4 and split["malformed"] == 2


# -- item 2: weights are validated where they come in -----------------------------------------
def test_weights_must_be_finite_and_not_negative(cli, data_dir):
    def rec(cid, weight):
        return (
            '{"id": "%s", "messages": [{"role": "user", "content": "%s"}, '
            '{"role": "assistant", "content": "%s", "weight": %s}]}' % (cid, Q + cid, A, weight)
        )

    src = data_dir / "w.jsonl"
    src.write_text(
        "\n".join([rec("inf", "Infinity"), rec("nan", "NaN"), rec("neg", "-5"), rec("big", "1e999"), rec("ok", "0.5")])
        + "\n"
    )
    out = data_dir / "out.jsonl"
    res = clean(cli, src, "-o", out).json()
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert [r["messages"][1]["weight"] for r in read_jsonl(out)] == [0.5]
    got = drops(out)
    assert res["counts"]["dropped"] == {"malformed": 4}
    assert got["inf"]["detail"] == "field 'messages[1].weight': weight must be a finite number, found inf"
    assert got["nan"]["detail"] == "field 'messages[1].weight': weight must be a finite number, found nan"
    assert got["neg"]["detail"] == "field 'messages[1].weight': weight must be 0 or more, found -5"
    assert got["big"]["line"] == 4 and "finite" in got["big"]["detail"]
    for flags in (
        ["--default-weight", "nan"],
        ["--condition-from", "model", "--weight", "GPT4=inf"],
        ["--condition-from", "model", "--weight", "GPT4=-1"],
    ):
        bad = cli("data", "clean", src, "-o", data_dir / "x.jsonl", *flags, expect=2)
        assert "a weight must be a finite number, 0 or more" in bad.stderr


# -- item 3: one UTF-8 policy ------------------------------------------------------------------
def test_invalid_utf8_is_dropped_the_same_way_in_array_and_jsonl(cli, data_dir):
    bad = json.dumps(sharegpt("u", "What is the boiling point here?", A)).encode().replace(b"boiling", b"boil\xffing")
    (data_dir / "a.json").write_bytes(b"[" + json.dumps(good("g")).encode() + b",\n" + bad + b"]")
    (data_dir / "a.jsonl").write_bytes(json.dumps(good("g")).encode() + b"\n" + bad + b"\n")
    details = []
    for name in ("a.json", "a.jsonl"):
        out = data_dir / f"{name}.out.jsonl"
        res = clean(cli, data_dir / name, "-o", out).json()
        assert res["counts"]["kept"] == 1 and "\ufffd" not in out.read_text(encoding="utf-8")
        details.append(drops(out)["u"]["detail"])
    assert details == ["field 'conversations[0].value': invalid UTF-8 (byte 0xff)"] * 2


# -- item 4: nothing usable is an error, and nothing is registered -----------------------------
@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.json", ""),
        ("list.json", "[]"),
        ("obj.json", "{}"),
        ("page.html", "<html><body><script>var x = 1;</script></body></html>"),
        ("all_bad.jsonl", '{"id": "x", "conversations": "nope"}\n'),
    ],
)
def test_nothing_usable_exits_non_zero_and_registers_nothing(cli, data_dir, name, content):
    (data_dir / name).write_text(content)
    out = data_dir / "out.jsonl"
    res = cli("data", "clean", data_dir / name, "-o", out, expect=2)
    assert "nothing registered" in res.stderr and "Traceback" not in res.output
    assert not out.exists() and datasets() == []
    assert [p.name for p in data_dir.iterdir() if p.name.startswith(".")] == []
    if name in ("empty.json", "list.json"):
        assert not (data_dir / "out.dropped.jsonl").exists()
    else:  # the report says why each record went
        assert read_jsonl(data_dir / "out.dropped.jsonl")[0]["reason"] == "malformed"


def test_tokenize_with_nothing_to_train_on_exits_non_zero(cli, data_dir, tiny_model_dir):
    write_jsonl(
        data_dir / "c.jsonl",
        [{"id": "z", "messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A, "weight": 0}]}],
    )
    res = cli(
        "data", "tokenize", data_dir / "c.jsonl", "--model", tiny_model_dir, "-o", data_dir / "t.parquet", expect=2
    )
    assert "no training sequence" in res.stderr and not (data_dir / "t.parquet").exists()
    assert [d["path"] for d in datasets()] == [str((data_dir / "c.jsonl").resolve())]  # only the input


# -- item 5: kill -9 leaves temp files; the next run removes them (only provably stale ones) ---
def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OPENCHAT_HOME": str(home)}


def _start_and_kill(command: list[str], data_dir: Path, home: Path, sig: int) -> int:
    """Start `command`, send `sig` as soon as its first temp output exists; its exit status."""
    proc = subprocess.Popen(command, env=_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".out.jsonl.") for p in data_dir.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "clean finished before it could be killed"
        time.sleep(0.005)
    proc.send_signal(sig)
    return proc.wait(), proc.pid


@pytest.mark.slow
def test_sigterm_removes_its_temp_files_on_the_spot(data_dir, tmp_path):
    src = write_jsonl(data_dir / "big.jsonl", [good(f"g{i}") for i in range(20_000)])
    out = data_dir / "out.jsonl"
    command = [sys.executable, "-m", "openchat_cli.app", "data", "clean", str(src), "-o", str(out)]
    code, _ = _start_and_kill(command, data_dir, tmp_path / "home", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    assert sorted(p.name for p in data_dir.iterdir()) == ["big.jsonl"]


@pytest.mark.slow
def test_kill_9_temp_files_are_removed_by_the_next_run(data_dir, tmp_path):
    src = write_jsonl(data_dir / "big.jsonl", [good(f"g{i}") for i in range(20_000)])
    out = data_dir / "out.jsonl"
    command = [sys.executable, "-m", "openchat_cli.app", "data", "clean", str(src), "-o", str(out)]
    code, killed_pid = _start_and_kill(command, data_dir, tmp_path / "home", signal.SIGKILL)
    assert code == -signal.SIGKILL
    left = sorted(p.name for p in data_dir.iterdir() if p.name.startswith("."))
    assert left and not out.exists()
    done = subprocess.run(command, env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".")) == []
    assert f"removed {len(left)} temp file(s) a killed earlier run left" in done.stderr
    assert len(read_jsonl(out)) == 20_000

    # Only provably stale files go: not one a live writer holds, not one of another output.
    from openchat_cli.atomic import writer_tag

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive = data_dir / f".out.jsonl.{writer_tag(sleeper.pid)}.abcd1234.tmp"
        alive.write_text("busy")
        dead_tag = writer_tag(killed_pid)  # the killed writer: its pid is free
        other = data_dir / f".other.jsonl.{dead_tag}.abcd1234.tmp"
        other.write_text("not ours")
        stale = data_dir / f".out.jsonl.{dead_tag}.abcd1234.tmp"
        stale.write_text("left by the killed run")
        write_jsonl(src, [good("a")])
        done = subprocess.run(
            command + ["--force"], env=_env(tmp_path / "home"), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".")) == sorted([alive.name, other.name])
    finally:
        sleeper.kill()
        sleeper.wait()


# -- item 6: a huge reply in an array costs a bounded multiple of its size ----------------------
def _peak_rss_mb(args: list[str], home: Path) -> float:
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "openchat_cli.app", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return float(done.stdout.strip())


@pytest.mark.slow
def test_a_huge_reply_in_an_array_has_bounded_memory(data_dir, tmp_path):
    size_mb = 20
    reply = ("lorem ipsum dolor sit amet " * (size_mb * (1 << 20) // 27 + 1))[: size_mb << 20]
    (data_dir / "huge.json").write_text(json.dumps([good("small"), sharegpt("huge", Q, reply)]))
    (data_dir / "small.json").write_text(json.dumps([good("small"), sharegpt("s2", Q, A + " more")]))
    base = _peak_rss_mb(
        ["data", "clean", str(data_dir / "small.json"), "-o", str(data_dir / "s.jsonl")], tmp_path / "h1"
    )
    peak = _peak_rss_mb(
        ["data", "clean", str(data_dir / "huge.json"), "-o", str(data_dir / "h.jsonl")], tmp_path / "h2"
    )
    assert len(read_jsonl(data_dir / "h.jsonl")) == 2
    # Before: about 16x the reply over the baseline (a list of its words for dedup, copies for
    # each step); now the text, its parsed value and one output line at a time.
    print(f"peak RSS: {base:.0f} MB for a small file, {peak:.0f} MB with a {size_mb} MB reply")
    assert peak - base < 5 * size_mb, (base, peak)


# -- item 7: ShareGPT's split-off parts are trimmed and kept ----------------------------------
def split_sharegpt(n: int) -> list[dict]:
    """ShareGPT-shaped records: long conversations split into parts (`ID_0`, `ID_1`, …) as in
    ShareGPT V3, where a part may start with the reply to the previous part's last question."""
    records = []
    for i in range(n):
        turns = [
            (
                ("human", f"Question {j} of conversation {i}: how does step {j} work?")
                if j % 2 == 0
                else ("gpt", f"Step {j} of conversation {i} works by doing the thing carefully.")
            )
            for j in range(7)
        ]
        parts = [turns[0:3], turns[3:6], turns[6:7]]  # human gpt human | gpt human gpt | human
        for k, part in enumerate(parts):
            records.append({"id": f"c{i}_{k}", "conversations": [{"from": r, "value": v} for r, v in part]})
    return records


def test_split_off_parts_are_trimmed_not_dropped(cli, data_dir):
    write_jsonl(data_dir / "sg.jsonl", split_sharegpt(5) + [good("whole")])
    res = clean(cli, data_dir / "sg.jsonl", "-o", data_dir / "o.jsonl").json()["counts"]
    kept = {r["id"]: [m["role"] for m in r["messages"]] for r in read_jsonl(data_dir / "o.jsonl")}
    assert res["kept"] == 11 and kept["c0_0"] == ["user", "assistant"] and kept["c0_1"] == ["user", "assistant"]
    assert kept["c0_1"] == ["user", "assistant"] and len(read_jsonl(data_dir / "o.jsonl")[1]["messages"]) == 2
    assert res["dropped"] == {"one_turn": 5}  # a lone question: nothing to train on
    assert res["fixes"] == {"trimmed_conversations": 10, "trimmed_leading_assistant": 5, "trimmed_trailing_user": 5}
    # --no-trim-ends keeps the old meaning: such conversations are dropped with their reason.
    old = clean(cli, data_dir / "sg.jsonl", "-o", data_dir / "o2.jsonl", "--no-trim-ends").json()["counts"]
    assert old["kept"] == 1 and old["dropped"] == {"leading_assistant": 5, "trailing_user": 5, "one_turn": 5}


# -- item 12: a locked catalog neither publishes the output nor blocks the rerun ---------------
def hold_write_lock(path: Path) -> subprocess.Popen:
    """Another real process holding the catalog's write lock (as a long write elsewhere would)."""
    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('begin immediate'); print('locked', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setenv("OPENCHAT_BUSY_TIMEOUT", "1")


def test_locked_catalog_publishes_nothing_and_the_rerun_works(cli, data_dir, short_busy_timeout):
    write_jsonl(data_dir / "in.jsonl", [good("a"), good("b")])
    out = data_dir / "out.jsonl"
    locker = hold_write_lock(open_catalog().path)
    try:
        res = cli("data", "clean", data_dir / "in.jsonl", "-o", out, expect=2)
        assert sorted(p.name for p in data_dir.iterdir()) == ["in.jsonl"]  # no output, report or temp file
        assert "locked" in res.stderr and "run the same command again" in res.stderr
        split = cli("data", "split", data_dir / "in.jsonl", "--eval", "0.5", expect=2)
        assert "locked" in split.stderr and sorted(p.name for p in data_dir.iterdir()) == ["in.jsonl"]
    finally:
        locker.kill()
        locker.wait()
    res = cli("data", "clean", data_dir / "in.jsonl", "-o", out, "--json").json()  # no --force needed
    assert len(read_jsonl(out)) == 2
    assert [d["id"] for d in datasets() if d["format"] == "conversations"] == [res["id"]]
    cli("data", "split", data_dir / "in.jsonl", "--eval", "0.5")


def test_locked_catalog_tokenize_leaves_no_parquet(cli, data_dir, tiny_model_dir, short_busy_timeout):
    from openchat_cli.data.io import ensure_registered

    src = write_jsonl(
        data_dir / "c.jsonl",
        [{"id": "c", "messages": [{"role": "user", "content": Q}, {"role": "assistant", "content": A}]}],
    )
    ensure_registered(src, "conversations")  # known before the lock, so tokenize gets to its output
    out = data_dir / "t.parquet"
    locker = hold_write_lock(open_catalog().path)
    try:
        res = cli("data", "tokenize", src, "--model", tiny_model_dir, "-o", out, expect=2)
        assert "locked" in res.stderr and "nothing was written" in res.stderr
        assert sorted(p.name for p in data_dir.iterdir()) == ["c.jsonl"]
    finally:
        locker.kill()
        locker.wait()
    cli("data", "tokenize", src, "--model", tiny_model_dir, "-o", out)
    assert out.exists() and len(datasets()) == 2


def test_deep_html_reply_and_deep_first_line_drop_only_their_record(cli, data_dir):
    """The kind of item 1 beyond the readers: the HTML-to-Markdown step recursed, and the JSONL
    sniffing parsed the first line with the recursive parser."""
    deep_html = "<div>" * 5000 + "deep" + "</div>" * 5000
    recs = [sharegpt("html", Q, deep_html), good("g1")]
    src = data_dir / "in.json"  # .json suffix: sniffed from the first line
    src.write_text(
        '{"id": "deep", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + "".join(json.dumps(r) + "\n" for r in recs)
    )
    out = data_dir / "out.jsonl"
    res = clean(cli, src, "-o", out).json()
    assert [r["id"] for r in read_jsonl(out)] == ["g1"] and res["counts"]["dropped"] == {"malformed": 2}
    got = drops(out)
    assert got["html"]["detail"].startswith("field 'messages[1].content': HTML nested too deep")
    assert got["html"]["line"] == 2 and "nested too deep" in next(d for d in got.values() if d["line"] == 1)["detail"]
