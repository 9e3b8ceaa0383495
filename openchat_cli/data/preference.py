"""Preference record shapes, each turned into `Pair`s (shared prompt, chosen and rejected replies).

Detected per record, like the conversation shapes in `formats.py`:

- `trl`: `prompt`?, `chosen`, `rejected` (strings or `[{role, content}]`); without a prompt, the
  implicit one: the shared leading messages, or the shared leading words of plain texts.
- `hh` (Anthropic HH-RLHF): `chosen`, `rejected` as "\\n\\nHuman: … \\n\\nAssistant: …"
  transcripts; the prompt is the turns both share, up to the last shared user turn.
- `rm-static`: `prompt` (a transcript ending in "Assistant:"), `response` (= chosen, ignored),
  `chosen`, `rejected`.
- `webgpt`: `question` ({`full_text`}), `answer_0/1`, `score_0/1`; the higher score wins, equal
  scores drop as `tie` (the quotes are not kept: each answer has its own).
- `shp`: `history`, `human_ref_A/B`, `labels` (1: A preferred).
- `gpt4llm`: `user_input` with `completion_a` (better) and `completion_b`, or with
  `responses_and_scores` ([{response, score}]): every two responses with different scores.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from openchat_cli.data.formats import PAIR_FORMATS, _ident, _model, _role, _str_field, check_weight
from openchat_cli.data.records import Drop, Location, Malformed, Pair
from openchat_cli.templates import content_text

__all__ = ["PAIR_FORMATS", "detect_pair", "normalize_pairs"]

# Anthropic HH transcripts: turns start with "Human:" / "Assistant:" after a blank line.
HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_pair(record: dict[str, Any]) -> str | None:
    """The preference shape of one record, or None if it is not a preference record."""
    if "user_input" in record and ("responses_and_scores" in record or "completion_a" in record):
        return "gpt4llm"
    if "answer_0" in record and "answer_1" in record:
        return "webgpt"
    if "human_ref_A" in record and "human_ref_B" in record:
        return "shp"
    if "chosen" in record and "rejected" in record:
        if "response" in record and "prompt" in record:
            return "rm-static"
        chosen, rejected = record["chosen"], record["rejected"]
        if (
            "prompt" not in record
            and isinstance(chosen, str)
            and isinstance(rejected, str)
            and looks_like_transcript(chosen)
        ):
            return "hh"
        return "trl"
    return None


def looks_like_transcript(text: str) -> bool:
    return text.lstrip().startswith("Human:") or text.startswith("\n\nHuman:")


def parse_transcript(text: str, field: str) -> list[dict[str, Any]]:
    """An HH transcript as messages. Text before the first turn marker is refused (Malformed)."""
    marks = list(HH_TURN.finditer(text))
    if not marks:
        raise Malformed("expected a transcript of '\\n\\nHuman: …' and '\\n\\nAssistant: …' turns", field)
    if text[: marks[0].start()].strip():
        raise Malformed("text before the first 'Human:' or 'Assistant:' turn", field)
    messages = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        messages.append({"role": HH_ROLES[m.group(1)], "content": text[m.end() : end]})
    return messages


def _messages(value: Any, field: str) -> list[dict[str, Any]]:
    """A list of {role, content} messages (OpenAI shape; our own `weight` is kept)."""
    if not isinstance(value, list):
        raise Malformed(
            f"expected a string or a list of {{role, content}} messages, found {type(value).__name__}", field
        )
    out = []
    for i, m in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise Malformed(f"expected an object, found {type(m).__name__}", where)
        if "role" not in m:
            raise Malformed("missing", f"{where}.role")
        try:
            content = content_text(m.get("content"))
        except TypeError as exc:
            raise Malformed(str(exc), f"{where}.content") from None
        msg: dict[str, Any] = {"role": _role(m["role"], f"{where}.role"), "content": content}
        if m.get("weight") is not None:
            msg["weight"] = check_weight(m["weight"], f"{where}.weight")
        out.append(msg)
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["role"] == b["role"] and a["content"].strip() == b["content"].strip()


def split_shared(
    chosen: list[dict[str, Any]], rejected: list[dict[str, Any]], field: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(prompt, chosen reply, rejected reply) from two full conversations: the prompt is their
    shared leading messages, cut back to end at a user turn."""
    k = 0
    while k < min(len(chosen), len(rejected)) and _same(chosen[k], rejected[k]):
        k += 1
    while k > 0 and chosen[k - 1]["role"] != "user":
        k -= 1
    if k == 0:
        raise Malformed("chosen and rejected share no leading user turn, so there is no prompt", field)
    return chosen[:k], chosen[k:], rejected[k:]


def split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) of plain texts with an implicit prompt: the shared leading text,
    cut back to the last whitespace so no word is split."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    while k > 0 and not chosen[k - 1].isspace():
        k -= 1
    prompt = chosen[:k].strip()
    if not prompt:
        raise Malformed("chosen and rejected share no leading text, so there is no prompt", "chosen")
    return prompt, chosen[k:], rejected[k:]


def _reply(value: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return _messages(value, field)


def _prompt(value: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if looks_like_transcript(value):
            messages = parse_transcript(value, field)
            if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
                messages.pop()  # "… \n\nAssistant:" waiting for the reply
            return messages
        return [{"role": "user", "content": value}]
    return _messages(value, field)


def from_trl(record: dict[str, Any], loc: Location, source: str) -> list[Pair]:
    chosen_raw, rejected_raw = record.get("chosen"), record.get("rejected")
    for key, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if not isinstance(value, (str, list)):
            raise Malformed(
                "missing"
                if value is None
                else f"expected a string or a list of messages, found {type(value).__name__}",
                key,
            )
    prompt_raw = record.get("prompt")
    replies_only = (
        isinstance(chosen_raw, list)
        and chosen_raw
        and isinstance(chosen_raw[0], dict)
        and str(chosen_raw[0].get("role", "")).lower() in ("assistant", "gpt", "model")
    )
    if (
        isinstance(chosen_raw, list)
        and isinstance(rejected_raw, list)
        and not isinstance(prompt_raw, list)
        and not (isinstance(prompt_raw, str) and replies_only)
    ):
        # Conversational with an implicit prompt (a string `prompt` beside full conversations, as
        # UltraFeedback-binarized has, is the same prompt again).
        prompt, chosen, rejected = split_shared(
            _messages(chosen_raw, "chosen"), _messages(rejected_raw, "rejected"), "chosen"
        )
    elif prompt_raw is None:
        if isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
            if looks_like_transcript(chosen_raw):
                return from_hh(record, loc, source)
            text, c, r = split_text(chosen_raw, rejected_raw)
            prompt, chosen, rejected = [{"role": "user", "content": text}], _reply(c, "chosen"), _reply(r, "rejected")
        else:
            raise Malformed("without a prompt, chosen and rejected must both be texts or both message lists", "prompt")
    else:
        if not isinstance(prompt_raw, (str, list)):
            raise Malformed(f"expected a string or a list of messages, found {type(prompt_raw).__name__}", "prompt")
        prompt = _prompt(prompt_raw, "prompt")
        chosen, rejected = _reply(chosen_raw, "chosen"), _reply(rejected_raw, "rejected")
        n = len(prompt)
        if (
            n
            and len(chosen) > n
            and len(rejected) > n
            and all(map(_same, prompt, chosen[:n]))
            and all(map(_same, prompt, rejected[:n]))
        ):
            chosen, rejected = chosen[n:], rejected[n:]  # full conversations beside an explicit prompt
    return [_pair(record, loc, source, prompt, chosen, rejected)]


def from_hh(record: dict[str, Any], loc: Location, source: str) -> list[Pair]:
    chosen = parse_transcript(_str_field(record, "chosen"), "chosen")
    rejected = parse_transcript(_str_field(record, "rejected"), "rejected")
    prompt, c, r = split_shared(chosen, rejected, "chosen")
    return [_pair(record, loc, source, prompt, c, r)]


def from_rm_static(record: dict[str, Any], loc: Location, source: str) -> list[Pair]:
    prompt = _prompt(_str_field(record, "prompt"), "prompt")
    return [
        _pair(
            record,
            loc,
            source,
            prompt,
            _reply(_str_field(record, "chosen"), "chosen"),
            _reply(_str_field(record, "rejected"), "rejected"),
        )
    ]


def _score(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed("missing" if value is None else f"expected a number, found {type(value).__name__}", key)
    return float(value)


def from_webgpt(record: dict[str, Any], loc: Location, source: str) -> list[Pair]:
    question = record.get("question")
    if isinstance(question, dict):
        text = question.get("full_text")
        if not isinstance(text, str):
            raise Malformed("missing" if text is None else "expected a string", "question.full_text")
    elif isinstance(question, str):
        text = question
    else:
        raise Malformed("expected {full_text, …} or a string", "question")
    answers = [_str_field(record, "answer_0"), _str_field(record, "answer_1")]
    scores = [_score(record, "score_0"), _score(record, "score_1")]
    if scores[0] == scores[1]:
        raise Drop("tie", f"score_0 = score_1 = {scores[0]:g}")
    win = 0 if scores[0] > scores[1] else 1
    return [
        _pair(
            record,
            loc,
            source,
            [{"role": "user", "content": text}],
            _reply(answers[win], f"answer_{win}"),
            _reply(answers[1 - win], f"answer_{1 - win}"),
        )
    ]


def from_shp(record: dict[str, Any], loc: Location, source: str) -> list[Pair]:
    history = _str_field(record, "history")
    a, b = _str_field(record, "human_ref_A"), _str_field(record, "human_ref_B")
    label = record.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise Malformed(f"expected 1 (A preferred) or 0 (B preferred), found {label!r}", "labels")
    chosen, rejected = (a, b) if label == 1 else (b, a)
    pair = _pair(
        record,
        loc,
        source,
        [{"role": "user", "content": history}],
        _reply(chosen, "human_ref_A"),
        _reply(rejected, "human_ref_B"),
    )
    if "id" not in record and isinstance(record.get("post_id"), str):
        ids = [str(record.get(k, "")) for k in ("c_root_id_A", "c_root_id_B")]
        pair.id = f"{record['post_id']}:{ids[0]}:{ids[1]}" if all(ids) else pair.id
    return [pair]


def from_gpt4llm(record: dict[str, Any], loc: Location, source: str) -> list[Pair | Drop]:
    prompt = [{"role": "user", "content": _str_field(record, "user_input")}]
    if "responses_and_scores" not in record:
        return [
            _pair(
                record,
                loc,
                source,
                prompt,
                _reply(_str_field(record, "completion_a"), "completion_a"),
                _reply(_str_field(record, "completion_b"), "completion_b"),
            )
        ]
    ranked = record["responses_and_scores"]
    if not isinstance(ranked, list) or len(ranked) < 2:
        raise Malformed("expected a list of at least two {response, score}", "responses_and_scores")
    items = []
    for i, item in enumerate(ranked):
        where = f"responses_and_scores[{i}]"
        if not isinstance(item, dict):
            raise Malformed(f"expected an object, found {type(item).__name__}", where)
        items.append(
            (
                _str_field(item, "response") if "response" in item else _missing(f"{where}.response"),
                _score(item, "score") if "score" in item else _missing(f"{where}.score"),
            )
        )
    out: list[Pair | Drop] = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (ri, si), (rj, sj) = items[i], items[j]
            tag = f"{i}>{j}" if si >= sj else f"{j}>{i}"
            if si == sj:
                out.append(Drop("tie", f"responses {i} and {j} both scored {si:g}"))
                continue
            win, lose = (ri, rj) if si > sj else (rj, ri)
            pair = _pair(
                record,
                loc,
                source,
                [dict(m) for m in prompt],
                _reply(win, "responses_and_scores"),
                _reply(lose, "responses_and_scores"),
            )
            pair.id = f"{pair.id}#{tag}"
            out.append(pair)
    return out


def _missing(field: str):
    raise Malformed("missing", field)


def _pair(
    record: dict[str, Any],
    loc: Location,
    source: str,
    prompt: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    rejected: list[dict[str, Any]],
) -> Pair:
    system = record.get("system") if isinstance(record.get("system"), str) else None
    condition = record.get("condition") if isinstance(record.get("condition"), str) else None
    src = record.get("source") if isinstance(record.get("source"), str) and record.get("source") else source
    return Pair(
        id=_ident(record, loc),
        source=src,
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        system=system,
        condition=condition or None,
        model=_model(record),
    )


PAIR_READERS: dict[str, Callable[[dict[str, Any], Location, str], list]] = {
    "trl": from_trl,
    "hh": from_hh,
    "rm-static": from_rm_static,
    "webgpt": from_webgpt,
    "shp": from_shp,
    "gpt4llm": from_gpt4llm,
}


def normalize_pairs(record: dict[str, Any], loc: Location, source: str, shape: str) -> list[Pair | Drop]:
    """The pairs of one preference record (a ranked record gives several; a tie among them is a
    `Drop` in the list); Malformed / Drop when the record gives none."""
    return PAIR_READERS[shape](record, loc, source)
