"""What `eval answer` says when it cannot ask the endpoint for its model (no -m): the same
"could not be reached (cause)" line as for the answers themselves, not the SDK's
"Request timed out." for a port nobody listens on."""

from __future__ import annotations

import socket


def test_unreachable_endpoint_while_asking_for_the_model(cli, mtbench_file):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{port}/v1"
    result = cli("eval", "answer", mtbench_file, "-e", url, "--retries", "1", "--retry-wait", "0.01", expect=1)
    assert f"endpoint {url} could not be reached (" in result.stderr
    assert "gave up after 2 attempts" in result.stderr
    assert "timed out" not in result.stderr.lower()
    assert "Traceback" not in result.stderr
