"""HTML to Markdown and saved ShareGPT pages."""

from __future__ import annotations

import pytest

from openchat_cli.data.htmlmd import html_to_markdown, looks_like_html, strip_chrome
from openchat_cli.data.readers import ReadReport, read_file
from tests.data.helpers import CHATGPT_MARKDOWN, CHATGPT_REPLY, share_page


def test_chatgpt_reply_becomes_markdown_with_code_language():
    assert html_to_markdown(CHATGPT_REPLY) == CHATGPT_MARKDOWN


@pytest.mark.parametrize(
    "html, expected",
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("<h2>Title <em>x</em></h2><p>t</p>", "## Title *x*\n\nt"),
        ("<ol start='3'><li>x</li><li>y</li></ol>", "3. x\n4. y"),
        ("<ul><li>a<ul><li>b</li></ul></li></ul>", "- a\n  - b"),
        ("<p>use <code>a`b</code></p>", "use `` a`b ``"),  # CommonMark drops the padding spaces
        (
            "<p><a href='https://x.org'>site</a> and <a href='https://y.org'>https://y.org</a></p>",
            "[site](https://x.org) and https://y.org",
        ),
        (
            "<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr><tr><td>b</td></tr></table>",
            "| k | v |\n| --- | --- |\n| a | 1 |\n| b |",
        ),  # GFM fills a short row's missing cells
        ("<blockquote><p>q1</p><p>q2</p></blockquote>", "> q1\n>\n> q2"),
        ("<p>line<br>break &lt;tag&gt; &amp;</p>", "line\nbreak <tag> &"),
        ("<pre><code class='language-js'>if (a) {\n  b();\n}</code></pre>", "```js\nif (a) {\n  b();\n}\n```"),
        ("<pre><code>has ``` fence</code></pre>", "````\nhas ``` fence\n````"),
        (
            "<pre><div><span>bash</span><button>Copy code</button></div><code>ls</code></pre><pre></pre>",
            "```bash\nls\n```",
        ),
    ],
)
def test_converter_cases(html, expected):
    assert html_to_markdown(html) == expected


def test_page_chrome_is_removed():
    assert html_to_markdown("2 / 2<div><p>Answer</p></div>") == "Answer"
    assert html_to_markdown("<p>Copy code</p><p>x</p>") == "x"
    assert strip_chrome("1 / 1Write a poem") == "Write a poem"
    assert strip_chrome("1 / 2 is a half") == "1 / 2 is a half"  # an answer, not a counter
    assert strip_chrome("CopyCopy12 chars / 3 words text") == "Copy text"
    assert looks_like_html("1 / 1<div class='x'>hi</div>") and not looks_like_html("a <div> b")


def test_saved_share_page_yields_its_embedded_conversation(tmp_path):
    page = tmp_path / "abc123.html"
    page.write_text(
        share_page(
            "abc123",
            [{"from": "human", "value": "Add two numbers?"}, {"from": "gpt", "value": CHATGPT_REPLY}],
            model="GPT-4",
        )
    )
    (item,) = list(read_file(page, ReadReport()))
    assert item.error is None and item.container == "html"
    assert item.data["id"] == "abc123" and item.data["model"] == "GPT-4"
    assert item.data["conversations"][1]["value"] == CHATGPT_REPLY
    assert item.loc.line == 2


def test_page_without_embedded_json_is_a_malformed_record(tmp_path):
    page = tmp_path / "plain.html"
    page.write_text("<html><body><p>nothing here</p><script>var x = 1;</script></body></html>")
    (item,) = list(read_file(page, ReadReport()))
    assert item.data is None and "no embedded conversation JSON" in item.error
