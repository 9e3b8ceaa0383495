"""Conversation templates: our per-message token ids equal the Jinja chat_template's, weights
land on assistant tokens only, and special-token text in content stays text."""

from __future__ import annotations

import random
import zlib

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.templates import TEMPLATES, Conversation, Message, check_tokenizer, get_template

WORDS = [
    "hello",
    "world",
    "What",
    "is",
    "12",
    "+",
    "7?",
    "The",
    "answer",
    "19.",
    "def",
    "f(x):",
    "return",
    "x",
    "*",
    "2",
    "```python",
    "```",
    "#",
    "Title",
    "-",
    "item",
    "naïve",
    "café",
    "日本",
    "🙂",
    "a,b",
    "(c)",
    "'quoted'",
    "don't",
    "it's",
    "\n",
    "\n\n",
    "  ",
    "\t",
    "<b>",
]


def random_text(rng: random.Random, max_words: int = 25) -> str:
    text = ""
    for _ in range(rng.randint(1, max_words)):
        word = rng.choice(WORDS)
        text += word if word.isspace() else (rng.choice([" ", "", "\n"]) + word)
    return rng.choice(["", " ", "\n"]) + text + rng.choice(["", " ", "\n\n"])


def random_conversation(rng: random.Random) -> Conversation:
    turns = rng.randint(1, 4)
    messages = []
    for _ in range(turns):
        messages.append(Message("user", random_text(rng), input=random_text(rng, 5) if rng.random() < 0.2 else None))
        messages.append(Message("assistant", random_text(rng), weight=rng.choice([1.0, 0.1, 0.0])))
    if rng.random() < 0.3:
        messages = messages[:-1]  # ends on a user turn, like an inference prompt
    system = random_text(rng, 8) if rng.random() < 0.5 else None
    condition = rng.choice([None, None, "Math Correct", "GPT3"])
    return Conversation(messages=messages, system=system, condition=condition)


def as_openai(conv: Conversation) -> list[dict]:
    msgs = [{"role": "system", "content": conv.system}] if conv.system is not None else []
    for m in conv.messages:
        d = {"role": m.role, "content": m.content}
        if m.input is not None:
            d["input"] = m.input
        msgs.append(d)
    return msgs


def jinja_ids(tokenizer, template, conv: Conversation, add_generation_prompt: bool) -> list[int]:
    tokenizer.chat_template = template.jinja()
    kwargs = {"condition": conv.condition} if conv.condition else {}
    return list(
        tokenizer.apply_chat_template(
            as_openai(conv), tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
    )


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_token_ids_equal_jinja_chat_template(name, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    template = get_template(name)
    rng = random.Random(zlib.crc32(name.encode()))
    for _ in range(60):
        conv = random_conversation(rng)
        ours = template.encode(tokenizer, conv)
        assert ours.input_ids == jinja_ids(tokenizer, template, conv, False), template.render(conv)
        prompt = template.encode_prompt(tokenizer, conv)
        assert prompt == jinja_ids(tokenizer, template, conv, True)
        # The text rendering matches the Jinja rendering character for character, too.
        tokenizer.chat_template = template.jinja()
        kwargs = {"condition": conv.condition} if conv.condition else {}
        assert template.render(conv) == tokenizer.apply_chat_template(as_openai(conv), tokenize=False, **kwargs)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_prompt_is_prefix_of_training_sequence(name, tiny_tokenizer):
    """Inference sees exactly the tokens training saw before each assistant reply."""
    template = get_template(name)
    conv = Conversation([Message("user", "What is 2+2?"), Message("assistant", "4")], system="Be brief")
    full = template.encode(tiny_tokenizer, conv).input_ids
    prompt = template.encode_prompt(tiny_tokenizer, Conversation(conv.messages[:1], system="Be brief"))
    assert full[: len(prompt)] == prompt
    assert len(full) > len(prompt)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_weights_cover_assistant_content_and_end_of_turn_only(name, tiny_tokenizer):
    template = get_template(name)
    conv = Conversation(
        [
            Message("user", "first question"),
            Message("assistant", "first answer", weight=0.5),
            Message("user", "second question"),
            Message("assistant", "second answer", weight=1.0),
        ],
        system="sys",
    )
    enc = template.encode(tiny_tokenizer, conv)
    assert len(enc.weights) == len(enc.input_ids)
    supervised = [t for t, w in zip(enc.input_ids, enc.weights) if w > 0]
    text = tiny_tokenizer.decode(supervised)
    assert "first answer" in text and "second answer" in text
    assert "question" not in text and "sys" not in text
    eot = tiny_tokenizer.convert_tokens_to_ids(template.eot_token)
    assert supervised.count(eot) == 2  # the model learns to end both replies
    assert set(enc.weights) == {0.0, 0.5, 1.0}
    # message_starts point at each message's first token, in order
    assert enc.message_starts == sorted(enc.message_starts) and len(enc.message_starts) == 4
    assert enc.prefix_len == enc.message_starts[0]


def test_special_token_text_in_content_stays_text(tiny_tokenizer):
    template = get_template("openchat_3.5")
    eot = tiny_tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    conv = Conversation(
        [Message("user", "say <|end_of_turn|> and <s> please"), Message("assistant", "ok <|end_of_turn|>")]
    )
    ids = template.encode(tiny_tokenizer, conv).input_ids
    assert ids.count(eot) == 2  # only the two real turn ends
    assert ids.count(tiny_tokenizer.convert_tokens_to_ids("<s>")) == 1  # only the real BOS


def test_condition_changes_the_role_prefix():
    template = get_template("openchat_3.5")
    conv = Conversation([Message("user", "2+2?")], condition="Math Correct")
    assert (
        template.render(conv, add_generation_prompt=True)
        == "<s>Math Correct User: 2+2?<|end_of_turn|>Math Correct Assistant:"
    )
    assert template.render(Conversation([Message("user", "hi")]), True).startswith("<s>GPT4 Correct User: hi")


def test_alpaca_renders_input_and_default_system():
    text = get_template("alpaca").render(
        Conversation([Message("user", "Translate", input="cat"), Message("assistant", "chat")])
    )
    assert text.startswith("<s>Below is an instruction")
    assert "### Instruction:\nTranslate\n\n### Input:\ncat\n\n### Response:\nchat</s>" in text


def test_clean_reply_strips_the_separator():
    assert get_template("openchat_3.5").clean_reply(" Hello") == "Hello"
    assert get_template("openchat_3.6").clean_reply("\n\nHello") == "Hello"


def test_tokenizer_missing_control_tokens_is_a_clear_error():
    from openchat_cli.model.tiny import train_tokenizer

    class NoChatML:
        def __init__(self, tok):
            self.tok = tok

        def get_vocab(self):
            return {k: v for k, v in self.tok.get_vocab().items() if "im_" not in k}

    tok = train_tokenizer(["hello world"], 300)
    with pytest.raises(OpenchatError, match="add-tokens"):
        check_tokenizer(get_template("chatml"), NoChatML(tok))


def test_unknown_template_lists_choices():
    with pytest.raises(OpenchatError, match="chatml"):
        get_template("nope")


def test_from_dict_accepts_openai_messages_and_content_parts():
    conv = Conversation.from_dict(
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "c", "weight": 0},
            ],
            "condition": "Math Correct",
        }
    )
    assert conv.system == "S" and conv.messages[0].content == "ab"
    assert conv.messages[1].weight == 0.0 and conv.condition == "Math Correct"
