"""tui.client: the OpenAI SDK wrapper and its error classification, without a screen."""

from __future__ import annotations

import pytest

from openchat_cli.endpoints import normalize_base_url as normalize_endpoint
from tests.tui.conftest import DOWN_ENDPOINT
from tests.tui.fake_server import REPLY
from tui.client import ChatClient, ChatError, ReplyInfo
from tui.markdown_text import LineBreaks, with_line_breaks


@pytest.mark.parametrize(
    "given, expected",
    [
        ("127.0.0.1:18888", "http://127.0.0.1:18888/v1"),
        ("http://127.0.0.1:18888/", "http://127.0.0.1:18888/v1"),
        ("http://127.0.0.1:18888/v1/", "http://127.0.0.1:18888/v1"),
        ("https://example.org/openai/v1", "https://example.org/openai/v1"),
    ],
)
def test_normalize_endpoint(given, expected):
    assert normalize_endpoint(given) == expected


def test_line_breaks_outside_code_only():
    text = "roses are red\nviolets are blue\n\n```py\nx = 1\ny = 2\n```\n- a\n- b"
    expected = "roses are red  \nviolets are blue  \n\n```py\nx = 1\ny = 2\n```\n- a  \n- b"
    assert with_line_breaks(text) == expected
    # Fed in arbitrary fragments, a stream gives the same text.
    breaks = LineBreaks()
    assert "".join(breaks.feed(text[i : i + 3]) for i in range(0, len(text), 3)) == expected


async def _collect(client, **kwargs):
    info = ReplyInfo()
    parts = [d async for d in client.stream_chat(info=info, **kwargs)]
    return "".join(parts), info


@pytest.mark.asyncio
async def test_models_stream_and_errors(fake_server):
    client = ChatClient(fake_server.base_url)
    try:
        assert await client.models() == ["fake-model", "other-model"]
        text, info = await _collect(
            client,
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            condition="Math Correct",
            temperature=0.2,
            max_tokens=9,
        )
        assert text == REPLY and info.finish_reason == "stop"
        assert info.usage["completion_tokens"] > 0 and info.first_token_s is not None
        assert fake_server.requests[-1]["condition"] == "Math Correct"

        with pytest.raises(ChatError) as err:
            await _collect(client, model="nope", messages=[{"role": "user", "content": "hi"}])
        assert err.value.kind == "not_found" and err.value.status == 404
        with pytest.raises(ChatError) as err:
            await _collect(client, model="fake-model", messages=[{"role": "user", "content": "TOO_LONG"}])
        assert err.value.kind == "context" and "2048" in err.value.message
    finally:
        await client.close()

    bad = ChatClient(fake_server.base_url, api_key="bad-key")
    with pytest.raises(ChatError) as err:
        await bad.models()
    assert err.value.kind == "auth" and "--api-key" in err.value.hint
    await bad.close()

    wrong_path = ChatClient(fake_server.url + "/api")
    with pytest.raises(ChatError) as err:
        await wrong_path.models()
    assert err.value.kind == "not_found" and "/v1" in err.value.hint
    await wrong_path.close()

    down = ChatClient(DOWN_ENDPOINT)
    with pytest.raises(ChatError) as err:
        await down.models()
    assert err.value.kind == "unreachable" and err.value.retryable
    await down.close()
