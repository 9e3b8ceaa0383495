"""ReplyStream: whole characters only, the separator stripped, stop strings across tokens."""

from __future__ import annotations

import pytest

from openchat_cli.serve.detokenize import ReplyStream
from openchat_cli.templates import get_template

TEXT = " Héllo wörld, 你好! The answer is 19.\n\nDone"


@pytest.fixture(params=["stream-decoder", "window"])
def make(request):
    """Both decoding paths: tokenizers' DecodeStream, and the decode-a-window fallback."""

    def build(tokenizer, **kw):
        stream = ReplyStream(tokenizer, **kw)
        if request.param == "window":
            stream._stream = None
        return stream

    return build


def feed(stream: ReplyStream, ids: list[int]) -> list[str]:
    deltas = [stream.push([tok]) for tok in ids]
    deltas.append(stream.close())
    return deltas


def test_never_emits_a_split_character(tiny_tokenizer, make):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    # The tiny byte-level BPE has no merges for these characters: each is several byte tokens.
    assert len(ids) > len(TEXT.encode()) // 3
    stream = make(tiny_tokenizer)
    deltas = feed(stream, ids)
    assert "".join(deltas) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    # "你" is 3 bytes: nothing is emitted until its last byte arrives.
    assert "你" in deltas or any(d.startswith("你") for d in deltas)


def test_separator_is_stripped_once(tiny_tokenizer, make):
    template = get_template("openchat_3.5")
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    stream = make(tiny_tokenizer, clean=template.clean_reply, strip_prefix=template.sep)
    deltas = feed(stream, ids)
    assert "".join(deltas) == TEXT[1:]
    assert deltas[0] == ""  # the lone separator token is held back


@pytest.mark.parametrize("stop", ["\n\n", "answer is", "19.\n", "ö"])
def test_stop_strings_across_token_boundaries(tiny_tokenizer, make, stop):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    stream = make(tiny_tokenizer, stop=["never-there", stop])
    deltas = []
    for tok in ids:
        deltas.append(stream.push([tok]))
        # Nothing emitted so far may contain the stop string or run past it.
        assert stop not in "".join(deltas)
        if stream.stopped:
            break
    deltas.append(stream.close())
    assert stream.stopped
    assert "".join(deltas) == TEXT[: TEXT.index(stop)]
    assert stream.text == TEXT[: TEXT.index(stop)]


def test_stop_prefix_is_released_when_it_does_not_complete(tiny_tokenizer, make):
    ids = tiny_tokenizer.encode("The answer is 19", add_special_tokens=False)
    stream = make(tiny_tokenizer, stop=["19!"])
    deltas = feed(stream, ids)
    assert not stream.stopped
    assert "".join(deltas[:-1]) == "The answer is "  # "19" is held: it could begin "19!"
    assert deltas[-1] == "19"


def test_earliest_stop_wins_and_counts_tokens(tiny_tokenizer, make):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    stream = make(tiny_tokenizer, stop=["Done", "wörld"])
    stream.push(ids)  # all at once, as a coalesced engine event
    assert stream.stopped
    assert stream.text == " Héllo "
    assert stream.num_tokens == len(ids)


def test_skipped_tokens_count_but_do_not_show(tiny_tokenizer, make):
    eot = tiny_tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    ids = tiny_tokenizer.encode("Hello", add_special_tokens=False) + [eot]
    stream = make(tiny_tokenizer, skip_token_ids=[eot])
    assert "".join(feed(stream, ids)) == "Hello"
    assert stream.num_tokens == len(ids)
