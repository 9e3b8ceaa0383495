"""Benchmark the chat TUI's reply rendering: seconds to finish a Markdown reply vs its length.

    python benchmarks/bench_tui.py                         # 3k, 6k, 12k, 24k, 42k characters
    python benchmarks/bench_tui.py --lengths 3000 42600 --limit 60

A scripted OpenAI-compatible server on 127.0.0.1 sends each reply instantly (no delay between
chunks of 4 characters, about one token each), so what is timed is the app: the real
`OpenChatApp` runs headless (Textual's test driver, 100x40), a message is sent, and the clock
stops when the reply is saved and its last block is on screen. Rendering that stays linear in
the reply's length keeps chars/s flat: the last column is each row's chars/s over the first's.
One run per length; a length not done within --limit seconds is reported as such.

Measured on the shared 2-core dev machine (issue 14): before, 3k chars 2.1 s, 12k 16.3 s,
24k 55.9 s, 42.6k not done in 90 s; after, 3k 0.65 s, 12k 1.7 s, 24k 2.6 s, 42.6k 4.7 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "the model reply token stream render widget layout markdown block paragraph list code "
    "fast slow line width screen terminal chat user answer question value result"
).split()


def markdown_reply(length: int, seed: int = 0) -> str:
    """Chat-shaped Markdown of about `length` characters: headings, paragraphs, bullet lists,
    fenced code and single-newline lines, in a repeating but varied mix."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < length:
        kind = rng.randrange(5)
        words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
        if kind == 0:
            block = f"## {words(4).capitalize()}\n"
        elif kind == 1:
            block = words(rng.randint(30, 70)).capitalize() + ". **Bold** and `code`.\n"
        elif kind == 2:
            block = "\n".join(f"- {words(rng.randint(4, 10))}" for _ in range(rng.randint(3, 6))) + "\n"
        elif kind == 3:
            body = "\n".join(f"    value_{i} = compute({i}, '{rng.choice(WORDS)}')" for i in range(rng.randint(3, 8)))
            block = f"```python\ndef {rng.choice(WORDS)}():\n{body}\n```\n"
        else:
            block = "\n".join(words(rng.randint(5, 9)) for _ in range(3)) + "\n"
        parts.append(block)
        size += len(block) + 1
    return "\n".join(parts)[:length].rstrip() + "\n"


async def time_reply(length: int, limit: float) -> float | None:
    """Seconds from enter to the finished, rendered reply (None past `limit`)."""
    from textual.widgets import Input

    from store.catalog import open_catalog
    from tests.tui.fake_server import FakeServer
    from tui.app import OpenChatApp
    from tui.screens.chat import ChatScreen

    server = FakeServer(chunk_delay=0, reply=markdown_reply(length)).start()
    catalog = open_catalog()
    try:
        app = OpenChatApp(endpoint=server.base_url, catalog=catalog)
        async with app.run_test(size=(100, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, ChatScreen)
            while screen.models is None:
                await pilot.pause(0.05)
            screen.query_one("#prompt", Input).value = "Write a long answer"
            start = time.perf_counter()
            await pilot.press("enter")
            await pilot.pause(0.05)
            while screen.streaming:
                if time.perf_counter() - start > limit:
                    return None
                await pilot.pause(0.02)
            await pilot.pause()
            return time.perf_counter() - start
    finally:
        catalog.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[3000, 6000, 12000, 24000, 42600])
    parser.add_argument("--limit", type=float, default=120.0, help="seconds before giving up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["OPENCHAT_HOME"] = home
        rows = []
        for length in args.lengths:
            seconds = asyncio.run(time_reply(length, args.limit))
            rows.append((length, seconds))
            print(
                f"  {length} chars: {'not done' if seconds is None else f'{seconds:.2f} s'}",
                file=sys.stderr,
                flush=True,
            )
    base = next((n / s for n, s in rows if s), None)
    print(f"{'chars':>8} {'seconds':>9} {'chars/s':>9} {'vs first':>9}")
    for length, seconds in rows:
        if seconds is None:
            print(f"{length:>8} {'>' + format(args.limit, '.0f'):>9} {'-':>9} {'-':>9}")
            continue
        rate = length / seconds
        print(f"{length:>8} {seconds:>9.2f} {rate:>9.0f} {rate / base:>8.2f}x")


if __name__ == "__main__":
    main()
