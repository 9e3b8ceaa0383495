"""Streaming readers: JSONL, JSON arrays (also cut off mid-file), concatenated objects, detection."""

from __future__ import annotations

import io
import json

import pytest

from openchat_cli.data.readers import ReadReport, expand, jsonstream, read_file
from openchat_cli.data.readers.jsonstream import JsonStream, iter_jsonl
from openchat_cli.errors import OpenchatError
from tests.data.helpers import share_page

TRICKY = [
    {"id": "1", "text": "braces } ] { [ inside a string", "n": [1, 2, {"x": None}]},
    {"id": "2", "text": 'escaped \\" quote and backslash \\\\', "u": "héllo wörld ✓ 日本"},
    {"id": "3", "text": "ends with a backslash \\", "e": {}},
    {"id": "4", "list": [], "nested": [[[]]], "t": True, "f": 1.5e3},
]


def stream(data: bytes, name: str = "f.json") -> JsonStream:
    return JsonStream(io.BytesIO(data), name)


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_json_array_matches_json_load_at_any_chunk_size(monkeypatch, chunk):
    monkeypatch.setattr(jsonstream, "CHUNK", chunk)
    data = json.dumps(TRICKY, indent=2, ensure_ascii=False).encode()
    s = stream(data)
    items = list(s)
    assert [i.data for i in items] == TRICKY
    assert all(i.error is None for i in items)
    assert s.truncated_at is None and s.warnings == []
    # Line numbers point at each record's opening brace.
    lines = data.decode().split("\n")
    for item in items:
        assert lines[item.loc.line - 1].strip().startswith("{")
    assert [i.loc.record for i in items] == [1, 2, 3, 4]


@pytest.mark.parametrize("chunk", [5, 1 << 20])
@pytest.mark.parametrize("cut_in", ["string", "escape", "number", "between"])
def test_truncated_array_keeps_complete_records_and_reports_byte_offset(monkeypatch, chunk, cut_in):
    monkeypatch.setattr(jsonstream, "CHUNK", chunk)
    records = [{"id": str(i), "v": "ünïcode ✓ " * 3 + str(i)} for i in range(5)]
    full = json.dumps(records, ensure_ascii=False).encode()
    start_of_4th = full.index(b'{"id": "3"')
    cut = {
        "string": full.index(b"\xc3\xbcn", start_of_4th) + 5,  # inside a string
        "escape": None,
        "number": start_of_4th + 3,
        "between": start_of_4th - 1,  # right after a comma: no partial record
    }[cut_in]
    if cut_in == "escape":
        full = json.dumps(records[:3] + [{"id": "3", "v": 'say \\"hi'}], ensure_ascii=False).encode()
        cut = full.index(b"\\\\") + 1  # ends right after a backslash inside a string
        start_of_4th = full.index(b'{"id": "3"')
    s = stream(full[:cut])
    items = list(s)
    assert [i.data["id"] for i in items] == ["0", "1", "2"]
    assert s.truncated_at == (start_of_4th if cut_in != "between" else cut)
    assert len(s.warnings) == 1 and str(s.truncated_at) in s.warnings[0]


def test_malformed_and_scalar_elements_are_reported_and_skipped():
    data = b'[\n{"id": "a"},\n{"id": tru},\n42,\n{"id": "b"}\n]\n'
    items = list(stream(data))
    assert [i.data for i in items if i.error is None] == [{"id": "a"}, {"id": "b"}]
    bad = [i for i in items if i.error]
    assert [b.loc.line for b in bad] == [3, 4]
    assert "invalid JSON" in bad[0].error and "expected an object" in bad[1].error


def test_concatenated_and_pretty_printed_objects(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps({"id": "x", "k": [1]}, indent=2) + "\n" + json.dumps({"id": "y"}, indent=1))
    report = ReadReport()
    items = list(read_file(path, report))
    assert [i.data["id"] for i in items] == ["x", "y"]
    assert items[1].loc.line == 7


def test_jsonl_bad_lines_have_line_numbers():
    data = b'{"id": "a"}\n\nnot json\n{"id": "\xff\xfe"}\n{"id": "b"}\n'
    items = list(iter_jsonl(io.BytesIO(data), "x.jsonl"))
    assert [(i.loc.line, i.error is None) for i in items] == [(1, True), (3, False), (4, False), (5, True)]
    assert "UTF-8" in items[2].error


def test_bad_utf8_is_one_policy_in_arrays_jsonl_and_pages(tmp_path):
    """Issue #12 item 3: invalid UTF-8 in a JSON array was silently replaced with U+FFFD while the
    same record in JSONL was dropped; now every container reports it on the record, by field."""
    record = b'{"id": "a", "v": "x\xffy", "ok": "fine"}'
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[" + record + b', {"id": "b", "v": "good"}]')
    (tmp_path / "bad.jsonl").write_bytes(b"\xef\xbb\xbf" + record + b'\n{"id": "b", "v": "good"}\n')
    page = share_page("p", [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]).encode()
    (tmp_path / "page.html").write_bytes(page.replace(b"Q?", b"Q\xfe?"))
    for name in ("bom.json", "bad.jsonl"):
        items = list(read_file(tmp_path / name, ReadReport()))
        assert [i.error for i in items] == ["field 'v': invalid UTF-8 (byte 0xff)", None], name
        assert items[0].data["id"] == "a" and items[1].data == {"id": "b", "v": "good"}
    (item,) = read_file(tmp_path / "page.html", ReadReport())
    assert item.error == "field 'conversations[0].value': invalid UTF-8 (byte 0xfe)"


def test_detection_and_unreadable_inputs(tmp_path):
    (tmp_path / "empty.json").write_text("")
    report = ReadReport()
    assert list(read_file(tmp_path / "empty.json", report)) == []
    assert "empty file" in report.warnings[0]
    (tmp_path / "bin.json").write_bytes(b"\x00\x01garbage")
    with pytest.raises(OpenchatError, match="not JSON, JSONL or an HTML page"):
        list(read_file(tmp_path / "bin.json", ReadReport()))
    with pytest.raises(OpenchatError, match="no such file"):
        expand([tmp_path / "missing.json"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("x")
    with pytest.raises(OpenchatError, match="no .json, .jsonl or .html"):
        expand([tmp_path / "sub"])


def test_jsonl_with_a_broken_first_line_is_still_jsonl(tmp_path):
    path = tmp_path / "dump.json"  # not a .jsonl suffix: detected from the content
    path.write_text('{"id": "a", "conversations": [\n{"id": "b"}\n{"id": "c"}\n')
    items = list(read_file(path, ReadReport()))
    assert [(i.loc.line, i.data) for i in items] == [(1, None), (2, {"id": "b"}), (3, {"id": "c"})]


def test_escaped_lone_surrogate_is_not_called_invalid_utf8():
    data = b'{"id": "esc", "v": "\\udc80x"}\n{"id": "raw", "v": "\x80x"}\n{"id": "pair", "v": "\\ud83d\\ude00"}\n'
    items = list(iter_jsonl(io.BytesIO(data), "x.jsonl"))
    assert [i.error for i in items] == [
        "field 'v': lone surrogate \\udc80 (not valid Unicode)",
        "field 'v': invalid UTF-8 (byte 0x80)",
        None,
    ]
    assert items[2].data["v"] == "\U0001f600"
