"""Several system messages follow one rule (templates.join_system: trimmed, empty ones dropped,
joined by a blank line) in `data clean` + `data tokenize`, in the server's prompt and in the
saved Jinja chat template: checked token for token, through the real CLI and the real server.
OpenAI's `developer` role (what newer clients send instead of `system`) is a system message
everywhere (templates.message_role)."""

from __future__ import annotations

import json

import openai
import pyarrow.parquet as pq
import pytest

from openchat_cli.templates import Conversation, get_template, join_system, message_role

SYSTEMS = ["You are terse.", "  Answer in English.  ", "", "Never use lists."]
USER = "What is 12 plus 7?"
ANSWER = "It is 19."


def test_join_rule():
    assert join_system([]) is None
    assert join_system([None]) is None
    assert join_system(["", "  "]) == ""
    assert join_system(SYSTEMS) == "You are terse.\n\nAnswer in English.\n\nNever use lists."
    conv = Conversation.from_dict(
        {
            "system": "First.",
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": " Second. "}]},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    assert conv.system == "First.\n\nSecond."
    assert [message_role(r) for r in ("developer", "system", "user", "assistant")] == [
        "system",
        "system",
        "user",
        "assistant",
    ]
    developer = Conversation.from_dict(
        {"messages": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "hi"}]}
    )
    assert developer.system == "Be terse." and [m.role for m in developer.messages] == ["user"]


def system_messages(roles: str) -> list[dict]:
    """SYSTEMS as messages, each with its role from `roles` (s: system, d: developer)."""
    return [{"role": {"s": "system", "d": "developer"}[r], "content": text} for r, text in zip(roles, SYSTEMS)]


@pytest.mark.parametrize(
    ("template_name", "roles"),
    [("openchat_3.5", "ssss"), ("chatml", "ssss"), ("openchat_3.5", "dsdd"), ("chatml", "dddd")],
)
def test_data_serve_and_jinja_agree_token_for_token(
    template_name, roles, cli, tmp_path, tiny_model_dir, tiny_tokenizer
):
    from transformers import AutoTokenizer

    from openchat_cli.serve.protocol import ChatCompletionRequest
    from openchat_cli.serve.serving_chat import chat_prompt_ids

    template = get_template(template_name)
    messages = [*system_messages(roles), {"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}]

    # data: clean (system messages joined) then tokenize (the training sequence)
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"id": "s1", "messages": messages}) + "\n")
    cleaned = tmp_path / "clean.jsonl"
    cli("data", "clean", raw, "-o", cleaned, "--skip-check", "one_turn", "--skip-check", "too_short", "--json")
    record = json.loads(cleaned.read_text().splitlines()[0])
    assert record["system"] == join_system(SYSTEMS)
    parquet = tmp_path / "t.parquet"
    cli("data", "tokenize", cleaned, "--model", tiny_model_dir, "--template", template_name, "-o", parquet, "--json")
    trained = pq.read_table(parquet).column("input_ids").to_pylist()[0]

    # the saved Jinja template (what transformers, vLLM and other tools use)
    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    hf.chat_template = template.jinja()
    jinja_full = list(hf.apply_chat_template(messages, tokenize=True, return_dict=False))
    jinja_prompt = list(
        hf.apply_chat_template(messages[:-1], tokenize=True, return_dict=False, add_generation_prompt=True)
    )
    assert trained == jinja_full

    # the server's prompt, built by the chat serving layer from the same request body
    served = chat_prompt_ids(template, tiny_tokenizer, ChatCompletionRequest(model="m", messages=messages[:-1]))
    assert served == jinja_prompt
    assert trained[: len(served)] == served  # the prompt is the training sequence's beginning
    # `developer` is `system`: the same tokens as with system roles only
    assert jinja_full == list(
        hf.apply_chat_template([*system_messages("ssss"), *messages[-2:]], tokenize=True, return_dict=False)
    )


def test_real_server_prompts_with_every_system_message(tiny_server, tiny_model_dir):
    """The running server (the tiny model's template) keeps every system message: its prompt
    token count is what the saved Jinja template gives, and more than the first one alone."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # with its saved chat_template

    def jinja_prompt_len(messages):
        return len(hf.apply_chat_template(messages, tokenize=True, return_dict=False, add_generation_prompt=True))

    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)
    messages = [*({"role": "system", "content": s} for s in SYSTEMS), {"role": "user", "content": USER}]
    r = client.chat.completions.create(model=tiny_server.model, messages=messages, max_tokens=1)
    assert r.usage.prompt_tokens == jinja_prompt_len(messages)
    assert r.usage.prompt_tokens > jinja_prompt_len([messages[0], messages[-1]])
    mixed = [*system_messages("dsdd"), {"role": "user", "content": USER}]
    r = client.chat.completions.create(model=tiny_server.model, messages=mixed, max_tokens=1)
    assert r.usage.prompt_tokens == jinja_prompt_len(mixed) == jinja_prompt_len(messages)
