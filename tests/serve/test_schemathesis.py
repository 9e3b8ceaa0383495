"""Schemathesis over the real server's /openapi.json: no 5xx, and the schema says what the
server does (every request it calls valid is accepted, every one it calls invalid refused).

The server runs with a 64-token context and --max-n 2 so generated requests finish fast. Two
rejections no schema can state are allowed: a prompt plus max_tokens longer than the context
(`context_length_exceeded`), since the prompt's token count depends on the tokenizer, and a
response_format JSON schema the constrained-decoding library refuses. (The schema states the
vocabulary's id range for `logit_bias` keys: see openapi.id_range_pattern.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from tests.conftest import start_server, stop_server  # noqa: E402


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        tiny_model_dir, tmp_path_factory.mktemp("schemathesis"), "--max-model-len", "64", "--max-n", "2"
    )
    try:
        yield server
    finally:
        stop_server(server)
    log = server.log()
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def api_schema(small_server):
    return schemathesis.openapi.from_url(small_server.url + "/openapi.json")


def accepted_unless_too_long(ctx, response, case):
    """Schemathesis's positive-data check, except for prompts that overflow the context and
    response_format JSON schemas the constrained-decoding library cannot compile (any object is
    a JSON schema to OpenAPI)."""
    if response.status_code == 400:
        try:
            error = response.json()["error"]
            if error["code"] == "context_length_exceeded":
                return None
            if (error["param"] or "").startswith("response_format.json_schema"):
                return None
        except (ValueError, KeyError, TypeError):
            pass
    return positive_data_acceptance(ctx, response, case)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema(case):
    response = case.call_and_validate(
        excluded_checks=[positive_data_acceptance], additional_checks=[accepted_unless_too_long], timeout=60
    )
    assert response.status_code < 500, response.text
