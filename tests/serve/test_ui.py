"""The browser chat page of `openchat serve` (--ui): its files over HTTP, then the page in a real
headless Chromium sending messages to the real server on the tiny model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest

from tests.browser import browser_page
from tests.serve.conftest import API_KEYS, serve_in_thread

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
STATIC = Path(__file__).resolve().parents[2] / "openchat_cli" / "serve" / "ui_static"


def screenshot(page, name: str) -> None:
    """Save a README screenshot when $OPENCHAT_SCREENSHOTS names a folder (e.g. docs)."""
    folder = os.environ.get("OPENCHAT_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def test_page_files_are_served_offline(tiny_server):
    page = httpx.get(tiny_server.url + "/", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Every script and stylesheet the page names is served by this server, none from elsewhere.
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/ui/chat.js" in assets and "/ui/vendor/marked.umd.js" in assets
    for asset in assets:
        if asset.startswith("data:"):
            continue
        assert asset.startswith("/ui/"), asset
        resp = httpx.get(tiny_server.url + asset)
        assert resp.status_code == 200 and len(resp.content) > 500, asset
    for path in STATIC.rglob("*"):
        if path.suffix in (".html", ".js", ".css"):
            assert not re.search(
                r"(?:src|href)=[\"']https?://|import\s*\(|fetch\(\s*[\"']https?://", path.read_text()
            ), path
    # API clients still get the JSON description at /; unknown /ui/ paths are plain 404s.
    assert httpx.get(tiny_server.url + "/").json()["api"] == "/v1"
    assert httpx.get(tiny_server.url + "/ui/nope.js").status_code == 404


def test_page_is_off_unless_asked(guarded_server):
    """The guarded fixture has no `ui`: / stays the key-protected JSON description."""
    resp = httpx.get(guarded_server.url + "/", headers=HTML)
    assert resp.status_code == 401
    resp = httpx.get(guarded_server.url + "/", headers={**HTML, "Authorization": f"Bearer {API_KEYS[0]}"})
    assert resp.json()["api"] == "/v1"
    assert httpx.get(guarded_server.url + "/ui/chat.js").status_code == 401


@pytest.mark.slow
def test_chat_page_streams_a_reply_and_keeps_the_chat(tiny_server):
    with browser_page() as (page, errors):
        page.goto(tiny_server.url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.locator("#model option").all_inner_texts() == [tiny_server.model]
        assert page.locator("#api-key-row").is_hidden()  # no keys on this server
        page.fill("#system", "You are terse.")
        page.fill("#max-tokens", "12")
        page.fill("#temperature", "0")
        page.fill("#prompt", "Say hello in **bold**")
        page.press("#prompt", "Enter")
        reply = page.locator(".message.assistant[data-done='1']")
        reply.wait_for(timeout=60_000)
        text = reply.locator(".body").inner_text()
        assert text.strip(), "the streamed reply is empty"
        assert page.locator(".message.user").inner_text().endswith("Say hello in **bold**")

        # Replies are Markdown: rendered, code highlighted, and sanitised (model text is untrusted).
        rendered = page.evaluate("""() => { const d = document.createElement('div');
            renderMarkdown(d, '**bold** <img src="data:," onerror="window.pwned=1">'
                              + '<script>window.pwned=2</script>\\n\\n```python\\ndef f(x):\\n    return x\\n```');
            return d.innerHTML; }""")
        assert "<strong>bold</strong>" in rendered and "hljs-keyword" in rendered
        assert "onerror" not in rendered and page.evaluate("window.pwned") is None

        # The same request through the API gives the same greedy reply: the page sent the system
        # prompt, temperature and max tokens it shows.
        import openai

        client = openai.OpenAI(base_url=tiny_server.base_url, api_key="x", max_retries=0)
        same = client.chat.completions.create(
            model=tiny_server.model,
            temperature=0,
            max_tokens=12,
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello in **bold**"},
            ],
        )
        stored = json.loads(page.evaluate("localStorage.getItem('openchat.ui.v1')"))
        assert stored["chats"][0]["messages"][-1]["content"] == same.choices[0].message.content

        # Chats stay in the browser: a reload shows the conversation again.
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator(".message").count() == 2
        assert page.locator("#chat-list li").count() == 1
        if os.environ.get("OPENCHAT_SCREENSHOTS"):  # the README picture: a stored chat with Markdown and code
            page.evaluate("""() => { const s = JSON.parse(localStorage.getItem('openchat.ui.v1'));
                s.chats.unshift({id: 'demo', title: 'Reverse a list', messages: [
                  {role: 'user', content: 'How do I reverse a list in Python?'},
                  {role: 'assistant', content: 'Use **slicing** or `reversed()`:\\n\\n```python\\nitems = [1, 2, 3]\\n'
                   + 'print(items[::-1])         # [3, 2, 1]\\nprint(list(reversed(items)))\\n```\\n\\n'
                   + '- `items[::-1]` makes a copy\\n- `items.reverse()` reverses in place'}]});
                s.current = 'demo'; localStorage.setItem('openchat.ui.v1', JSON.stringify(s)); }""")
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            screenshot(page, "ui-chat.png")
            page.click("#chat-list li:nth-child(2)")

        # Stop ends a long reply early; the page is ready for the next message. (A long budget:
        # the server's default of 256 tokens can be over before a loaded machine sees the button.)
        page.fill("#max-tokens", "1500")
        page.fill("#prompt", "Tell a long story")
        page.press("#prompt", "Enter")
        page.wait_for_selector("#stop:visible", timeout=10_000)
        page.click("#stop")
        page.wait_for_selector("body[data-busy='0']", timeout=30_000)
        assert page.inner_text("#status") in ("Stopped.", "Done.", "Stopped at the token limit.")
        assert page.locator(".message.assistant").count() == 2
        assert errors == []


@pytest.mark.slow
def test_chat_page_asks_for_the_key(tiny_model_dir):
    """With API keys on, the page shows a key field; once given, it lists models and chats."""
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.app import ServerConfig, create_app
    from openchat_cli.serve.engines.base import eos_token_ids
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import get_template

    tokenizer = load_tokenizer(tiny_model_dir)
    template = get_template("openchat_3.5")
    config = ServerConfig(
        model_name="keyed",
        template=template,
        api_keys=API_KEYS,
        ui=True,
        stop_token_ids=eos_token_ids(tiny_model_dir, tokenizer, template.eot_token),
        default_max_tokens=8,
        allowed_hosts=("127.0.0.1", "localhost", "[::1]"),
    )
    app = create_app(TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=4), config)
    with serve_in_thread(app) as (url, _server, _thread), browser_page() as (page, errors):
        page.goto(url + "/")
        page.wait_for_selector("#api-key-row:visible", timeout=30_000)
        assert "API key" in page.inner_text("#status")
        page.fill("#api-key", API_KEYS[1])
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.fill("#prompt", "Hi")
        page.press("#prompt", "Enter")
        page.locator(".message.assistant[data-done='1']").wait_for(timeout=60_000)
        assert page.locator(".message.error").count() == 0
        # The 401 of the first model listing is the only console error (Chromium logs failed fetches).
        assert all("401" in e for e in errors), errors
