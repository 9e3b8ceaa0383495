"""`eval answer` against models whose context is smaller than prompt + --max-tokens: every
question ends answered or recorded as truncated, never failed (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openchat_cli.eval.context_limit import parse_context_overflow
from store.catalog import open_catalog
from tests.eval.conftest import write_jsonl
from tests.eval.scripted import ScriptedServer, prompt_tokens


@pytest.mark.parametrize(
    "status, code, message, expected",
    [
        (
            400,
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
            "(1076 in the messages, 1024 in the completion). Please reduce the length of the messages "
            "or completion.",
            (2048, 1076, False),
        ),
        (
            400,
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 1024 output "
            "tokens and your prompt contains at least 1025 input tokens, for a total of at least 2049 "
            "tokens.",
            (2048, 1025, True),
        ),
        (
            400,
            400,
            "'max_tokens' or 'max_completion_tokens' is too large: 1024. This model's maximum context "
            "length is 2048 tokens and your request has 1500 input tokens (1024 > 2048 - 1500).",
            (2048, 1500, False),
        ),
        (
            400,
            "context_length_exceeded",
            "This model's maximum context length is 512 tokens, but the prompt "
            "has 530 tokens (no room to generate). Please shorten the messages.",
            (512, 530, False),
        ),
        (
            400,
            None,
            "The decoder prompt (length 3000) is longer than the maximum model length of 2048.",
            (2048, 3000, False),
        ),
        (
            400,
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            (8192, 9000, False),
        ),
        (400, "context_length_exceeded", "Request too large.", (None, None, False)),
    ],
)
def test_context_errors_are_read_from_every_server_shape(status, code, message, expected):
    overflow = parse_context_overflow(status, code, message)
    assert overflow is not None
    assert (overflow.context_length, overflow.prompt_tokens, overflow.at_least) == expected


@pytest.mark.parametrize(
    "status, code, message",
    [
        (400, "invalid_value", "Invalid value for 'n': at most 8 choices per request"),
        (401, None, "This model's maximum context length is 2048 tokens."),  # not a request-size status
        (400, None, "temperature must be at most 2"),
    ],
)
def test_other_errors_are_not_context_errors(status, code, message):
    assert parse_context_overflow(status, code, message) is None


def mtbench_like(count: int) -> list[dict]:
    """MT-bench-shaped 2-turn questions whose first turns grow from short to longer than 2,048
    tokens, so that with --max-tokens 1024 some fit, some are clamped, some cannot be asked."""
    return [
        {
            "question_id": 81 + i,
            "category": "writing",
            "turns": [
                f"Question {i}: " + " ".join(["describe"] * (20 + 27 * i)),
                "Now rewrite your answer " + " ".join(["briefly"] * 40),
            ],
        }
        for i in range(count)
    ]


@pytest.fixture
def small_context(scripted: ScriptedServer) -> ScriptedServer:
    scripted.context_length = 2048
    return scripted


def _verbose_answer_args(questions: Path, endpoint: str, *extra: str) -> list[str]:
    """`eval answer` by the scripted verbose model, asking 1,024 new tokens a turn (more than fits)."""
    return [
        "eval",
        "answer",
        str(questions),
        "--endpoint",
        endpoint,
        "--model",
        "verbose-model",
        "--max-tokens",
        "1024",
        *extra,
    ]


def _answers(run_id: str) -> list[dict]:
    cat = open_catalog()
    return cat.query("select * from answers where eval_id = ? order by question_id", [run_id])


def test_eighty_mtbench_questions_against_a_2048_context_all_end_answered_or_truncated(
    cli, small_context: ScriptedServer, tmp_path: Path
):
    questions = write_jsonl(tmp_path / "question.jsonl", mtbench_like(80))
    args = _verbose_answer_args(questions, small_context.base_url, "--concurrency", "8")
    result = cli(*args, "--json")
    out = result.json()
    assert out["status"] == "completed" and out["errors"] == []
    assert out["metrics"]["answered"] == 80 and out["metrics"]["errors"] == 0

    answers = _answers(out["run_id"])
    assert len(answers) == 80
    metas = [a["meta"] for a in answers]
    truncated = [m for m in metas if m.get("truncated")]
    assert out["metrics"]["truncated"] == len(truncated)
    # All three outcomes occur: full budget, clamped to the room left, prompt alone too long.
    full = [m for m in metas if not m.get("truncated")]
    clamped = [m for m in truncated if "context_length" not in m["finish_reasons"]]
    unaskable = [m for m in truncated if m["finish_reasons"][0] == "context_length"]
    assert full and clamped and unaskable, (len(full), len(clamped), len(unaskable))
    for answer in answers:
        meta = answer["meta"]
        for index, (text, reason) in enumerate(zip(answer["turns"], meta["finish_reasons"])):
            if reason == "context_length":
                assert text == "" and index in meta["truncated_turns"]
            else:
                assert text  # a real reply
    # Every request that was answered fitted the context; re-sends were few.
    answered = [
        r
        for r in small_context.requests
        if r.get("max_tokens") is None or prompt_tokens(r["messages"]) + r["max_tokens"] <= 2048
    ]
    assert len(answered) >= 80
    assert all(m["context_length"] == 2048 for m in truncated)

    again = cli(*args, "--json").json()  # re-running finds nothing left to ask
    assert again["run_id"] == out["run_id"] and again["answered_now"] == 0

    text = cli(*args, "--new").stdout
    assert f"{len(truncated)} truncated" in text


def test_a_server_that_gives_no_numbers_gets_the_request_without_max_tokens(
    cli, small_context: ScriptedServer, tmp_path: Path
):
    small_context.context_style = "bare"
    questions = write_jsonl(tmp_path / "question.jsonl", mtbench_like(80)[::8])
    out = cli(*_verbose_answer_args(questions, small_context.base_url, "--json")).json()
    assert out["status"] == "completed" and out["metrics"]["answered"] == 10
    assert out["metrics"]["truncated"] > 0
    without = [r for r in small_context.requests if "max_tokens" not in r]
    assert without  # the fallback: let the server fill what the context leaves


@pytest.mark.slow
def test_the_real_server_with_a_small_context_answers_or_truncates_every_question(
    cli, tiny_model_dir: Path, tmp_path: Path
):
    from tests.conftest import start_server, stop_server

    server = start_server(tiny_model_dir, tmp_path, "--max-model-len", "256")
    try:
        turns = [("Hello! How can I help you today? " * (1 + 3 * i)).strip() for i in range(6)]
        records = [
            {"question_id": i + 1, "category": "writing", "turns": [turn, "Please write a short poem about the sea."]}
            for i, turn in enumerate(turns)
        ]
        questions = write_jsonl(tmp_path / "question.jsonl", records)
        out = cli(
            "eval",
            "answer",
            str(questions),
            "--endpoint",
            server.base_url,
            "--max-tokens",
            "200",
            "--temperature",
            "1.0",
            "--concurrency",
            "3",
            "--json",
        ).json()
    finally:
        stop_server(server)
    assert out["status"] == "completed" and out["errors"] == []
    assert out["metrics"]["answered"] == 6
    metas = [a["meta"] for a in _answers(out["run_id"])]
    assert out["metrics"]["truncated"] == sum(1 for m in metas if m.get("truncated")) > 0
    assert all(m.get("context_length") in (None, 256) for m in metas)
    assert any(m.get("truncated") for m in metas)


# -- the client on its own --------------------------------------------------------------------
def _complete(server: ScriptedServer, messages: list[dict], max_tokens: int, **kwargs):
    import asyncio

    from openchat_cli.eval.client import ChatClient

    async def go():
        async with ChatClient(server.base_url, "verbose-model", retries=0) as client:
            result = await client.complete(messages, max_tokens=max_tokens, **kwargs)
            return result, client.context_length, client.refitted

    return asyncio.run(go())


LONG_PROMPT = [{"role": "user", "content": " ".join(["word"] * 1500)}]  # 1,504 tokens


def test_the_context_from_v1_models_clamps_before_asking(small_context: ScriptedServer):
    result, context, refitted = _complete(small_context, LONG_PROMPT, 1024, prompt_floor=1504)
    assert context == 2048 and refitted == 0
    assert [r["max_tokens"] for r in small_context.requests] == [2048 - 1504]
    assert result.clamped and result.max_tokens == 544 and result.requested_max_tokens == 1024


def test_without_v1_models_the_counts_in_the_error_set_the_budget(small_context: ScriptedServer):
    small_context.models_report_context = False
    result, context, refitted = _complete(small_context, LONG_PROMPT, 1024)
    assert [r["max_tokens"] for r in small_context.requests] == [1024, 544]
    assert context == 2048 and refitted == 1 and result.max_tokens == 544


def test_a_lower_bound_of_the_prompt_converges(small_context: ScriptedServer):
    small_context.models_report_context = False
    small_context.context_style = "at-least"
    result, _, refitted = _complete(small_context, LONG_PROMPT, 1024)
    sent = [r.get("max_tokens") for r in small_context.requests]
    assert sent[0] == 1024 and 1 <= refitted <= 3
    assert result.max_tokens is None or result.max_tokens <= 544
    assert result.text


def test_a_prompt_longer_than_the_context_raises_context_length_exceeded(small_context: ScriptedServer):
    from openchat_cli.eval.client import ContextLengthExceeded

    with pytest.raises(ContextLengthExceeded) as caught:
        _complete(small_context, [{"role": "user", "content": " ".join(["word"] * 2100)}], 1024)
    assert caught.value.context_length == 2048 and caught.value.prompt_tokens == 2104
    assert not caught.value.fatal
