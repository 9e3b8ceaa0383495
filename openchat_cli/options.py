"""Options every command spells the same way: one name, one short flag, one meaning.

-e/--endpoint     an OpenAI-compatible base URL           -m/--model   a model name as served
--api-key         $OPENCHAT_API_KEY, else $OPENAI_API_KEY -c/--concurrency   requests in flight
-n/--limit        at most N items (rows shown, questions asked)      --json   machine-readable
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

# Click reads the first of these that is set: OPENCHAT_API_KEY takes precedence over OPENAI_API_KEY.
API_KEY_ENVVARS = ["OPENCHAT_API_KEY", "OPENAI_API_KEY"]
# The judge is usually another provider than the model under test: its own variable comes first.
JUDGE_API_KEY_ENVVARS = ["OPENCHAT_JUDGE_API_KEY", *API_KEY_ENVVARS]

ApiKey = Annotated[
    Optional[str],
    typer.Option(
        "--api-key",
        envvar=API_KEY_ENVVARS,
        show_envvar=True,
        help="Bearer key for the endpoint (needed when the server was started with --api-keys).",
    ),
]
JudgeApiKey = Annotated[
    Optional[str],
    typer.Option("--judge-api-key", envvar=JUDGE_API_KEY_ENVVARS, show_envvar=True, help="Bearer key for the judge."),
]
Model = Annotated[
    Optional[str], typer.Option("--model", "-m", help="Model name as served (default: the endpoint's first model).")
]
Concurrency = Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight at once.")]
Limit = Annotated[Optional[int], typer.Option("--limit", "-n", min=1, help="At most N questions (the first N).")]
Retries = Annotated[int, typer.Option("--retries", min=0, help="Retries per request on 429 / 5xx / connection errors.")]
RetryWait = Annotated[
    float, typer.Option("--retry-wait", min=0.0, help="First backoff in seconds (doubles each retry).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
RunName = Annotated[Optional[str], typer.Option("--name", help="Label for the run (default: the model name).")]
New = Annotated[bool, typer.Option("--new", help="Start a fresh run even if a matching one exists.")]
CheckpointRef = Annotated[
    Optional[str], typer.Option("--checkpoint", help="Catalog checkpoint the endpoint serves (for lineage).")
]
