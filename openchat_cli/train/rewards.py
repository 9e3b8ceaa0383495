"""GRPO's reward functions, from `--reward` specs: the exact-answer grader, a reward model, a judge.

    grade               1 when `openchat eval grade`'s exact-answer grader finds the prompt's answer, else 0
    rm:ck-…|DIR         a sequence-classification checkpoint's score of prompt + completion
    judge:URL[#MODEL]   an OpenAI-compatible judge's 1-10 rating (eval's single-answer prompt), as (r - 1) / 9

Each may end in `=WEIGHT` (default 1): the completion's reward is the weighted sum. A reward a
function cannot give (the judge gave no rating) is NaN: left out of the sum, and a completion no
function could score gets advantage 0 (as TRL does).

`check` runs in `openchat train` before anything is started, so a prompt set without answers,
a missing reward model or an unreachable judge fail in a second with a clear message; `build`
runs in the rank and loads what the rewards need.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openchat_cli.errors import OpenchatError
from openchat_cli.train.grpo_prompts import Prompt

KINDS = ("grade", "rm", "judge")


@dataclass(frozen=True)
class RewardSpec:
    kind: str  # grade | rm | judge
    target: str | None  # rm: checkpoint ref; judge: base URL
    weight: float = 1.0
    model: str | None = None  # judge: the model name to ask for (default: the first it lists)

    @property
    def name(self) -> str:
        return self.kind if self.kind == "grade" else f"{self.kind}:{self.target}"


def parse_reward(text: str) -> RewardSpec:
    """`grade`, `rm:ck-1a2b=0.5`, `judge:http://host:8000/v1#gpt-4o=2` -> RewardSpec."""
    body, weight = text.strip(), 1.0
    head, sep, tail = body.rpartition("=")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            pass  # an '=' inside a URL, not a weight
        else:
            body = head
    if not math.isfinite(weight):
        raise OpenchatError(f"--reward {text}: the weight must be a finite number")
    kind, _, target = body.partition(":")
    if kind not in KINDS:
        raise OpenchatError(f"--reward {text}: unknown reward '{kind}' (choose grade, rm:CHECKPOINT or judge:URL)")
    if kind == "grade":
        if target:
            raise OpenchatError(f"--reward {text}: grade takes no argument")
        return RewardSpec("grade", None, weight)
    if not target:
        raise OpenchatError(
            f"--reward {text}: {kind} needs {'a checkpoint' if kind == 'rm' else 'a URL'} after '{kind}:'"
        )
    model = None
    if kind == "judge" and "#" in target:
        target, model = target.split("#", 1)
    return RewardSpec(kind, target, weight, model or None)


def parse_rewards(texts: list[str]) -> list[RewardSpec]:
    specs = [parse_reward(t) for t in texts]
    if not specs:
        raise OpenchatError("--method grpo needs at least one --reward")
    if all(s.weight == 0 for s in specs):
        raise OpenchatError("every --reward has weight 0: nothing to learn from")
    return specs


# -- checks before training ---------------------------------------------------------------------
def _reward_model_dir(ref: str) -> Path:
    from transformers import AutoConfig

    from openchat_cli.model_dir import require_weights, resolve_model

    try:
        path, _ = resolve_model(ref)
    except OpenchatError as exc:
        raise OpenchatError(f"--reward rm:{ref}: {exc.message}") from None
    require_weights(path)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise OpenchatError(f"--reward rm:{ref}: cannot read {path}/config.json ({exc})") from None
    if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
        raise OpenchatError(
            f"--reward rm:{ref}: {path} is not a reward model (its architectures are "
            f"{config.architectures}; expected a …ForSequenceClassification checkpoint, "
            "as `openchat train --method rm` makes)"
        )
    if getattr(config, "num_labels", 1) != 1:
        raise OpenchatError(f"--reward rm:{ref}: {path} has {config.num_labels} labels; a reward model has one score")
    return path


def _judge_model(spec: RewardSpec, timeout_s: float = 10.0) -> str:
    """The judge's model name: asked of its /models, which also proves it is reachable."""
    import httpx

    from openchat_cli.endpoints import normalize_base_url

    url = normalize_base_url(spec.target or "")
    try:
        response = httpx.get(f"{url}/models", timeout=timeout_s)
        response.raise_for_status()
        listed = [m["id"] for m in response.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise OpenchatError(
            f"--reward judge:{spec.target}: the judge at {url} is unreachable or not "
            f"OpenAI-compatible ({type(exc).__name__}: {exc})"
        ) from None
    if spec.model:
        return spec.model
    if not listed:
        raise OpenchatError(f"--reward judge:{spec.target}: {url}/models lists no model; name one with judge:URL#MODEL")
    return listed[0]


def check(specs: list[RewardSpec], prompts: list[Prompt], prompts_path: Path) -> list[RewardSpec]:
    """Fail now on what would fail mid-run; returns the specs with the judge models resolved."""
    from openchat_cli.train.grpo_prompts import require_answers

    resolved = []
    for spec in specs:
        if spec.kind == "grade":
            require_answers(prompts, prompts_path)
        elif spec.kind == "rm":
            spec = RewardSpec("rm", str(_reward_model_dir(spec.target or "")), spec.weight)
        elif spec.kind == "judge":
            spec = RewardSpec("judge", spec.target, spec.weight, _judge_model(spec))
        resolved.append(spec)
    return resolved


def to_config(specs: list[RewardSpec]) -> list[dict[str, Any]]:
    return [{"kind": s.kind, "target": s.target, "weight": s.weight, "model": s.model} for s in specs]


def from_config(items: list[dict[str, Any]]) -> list[RewardSpec]:
    return [RewardSpec(i["kind"], i.get("target"), float(i.get("weight", 1.0)), i.get("model")) for i in items]


# -- the functions ------------------------------------------------------------------------------
class RewardFunction(Protocol):
    name: str

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        """One reward per (prompt, completion) pair; NaN where it cannot say."""


class GradeReward:
    """`openchat eval grade`'s exact-answer grader: 1.0 correct, 0.0 wrong or no answer found."""

    name = "grade"

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        from openchat_cli.eval.grade import grade_answer
        from openchat_cli.eval.questions import Question

        out = []
        for prompt, text in zip(prompts, completions):
            question = Question(prompt.id, None, [prompt.question], meta={"label": prompt.answer})
            out.append(float(grade_answer(question, text)["score"]))
        return out


class ModelReward:
    """A reward model's scalar score of the conversation with the completion as the reply,
    rendered with the reward model's own template."""

    def __init__(self, model_dir: Path, device: Any):
        import torch
        from transformers import AutoModelForSequenceClassification

        from openchat_cli.model_dir import load_tokenizer, model_template
        from openchat_cli.templates import get_template

        self.name = f"rm:{model_dir}"
        self.device = device
        self.tokenizer = load_tokenizer(model_dir)
        self.template = get_template(model_template(model_dir))
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).to(device).eval()
        )

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        import torch

        from openchat_cli.templates import Conversation

        out = []
        with torch.inference_mode():
            for prompt, text in zip(prompts, completions):
                conv = Conversation.from_dict({"messages": [*prompt.messages, {"role": "assistant", "content": text}]})
                ids = self.template.encode(self.tokenizer, conv).input_ids
                logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits
                out.append(float(logits[0, 0]))
        return out


class JudgeReward:
    """An OpenAI-compatible judge rates each completion 1-10 with eval's single-answer prompt
    (with the prompt's answer as the reference when it has one); the reward is (rating - 1) / 9."""

    def __init__(self, url: str, model: str):
        from openchat_cli.eval.judge_prompts import load_prompts
        from openchat_cli.eval.judging import Judge

        self.name = f"judge:{url}"
        self.url = url
        self.judge = Judge(model=model, mode="single", prompts=load_prompts(None), max_tokens=512)

    def __call__(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        return asyncio.run(self._rate(prompts, completions))

    async def _rate(self, prompts: list[Prompt], completions: list[str]) -> list[float]:
        from openchat_cli.eval.client import ChatClient
        from openchat_cli.eval.judging import judge_match
        from openchat_cli.eval.matches import SingleMatch
        from openchat_cli.eval.questions import Question

        async with ChatClient(self.url, self.judge.model, concurrency=16, retries=2) as client:
            matches = []
            for prompt, text in zip(prompts, completions):
                reference = [str(prompt.answer)] if prompt.answer is not None else None
                # eval's judge shows a reference only for these categories: "math" has one.
                question = Question(prompt.id, "math" if reference else "grpo", [prompt.question], reference=reference)
                matches.append(SingleMatch(question, 1, [text]))
            verdicts = await asyncio.gather(*(judge_match(client, self.judge, m) for m in matches))
        return [(v.score - 1.0) / 9.0 if v.score is not None else float("nan") for v in verdicts]


def build(specs: list[RewardSpec], device: Any) -> list[RewardFunction]:
    functions: list[RewardFunction] = []
    for spec in specs:
        if spec.kind == "grade":
            functions.append(GradeReward())
        elif spec.kind == "rm":
            functions.append(ModelReward(Path(spec.target or ""), device))
        else:
            functions.append(JudgeReward(spec.target or "", spec.model or ""))
    return functions
