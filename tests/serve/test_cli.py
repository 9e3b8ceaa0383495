"""`openchat serve` argument handling (the running server itself is tested in test_api.py)."""

from __future__ import annotations

from openchat_cli.serve.cli import _split_keys


def test_help_lists_the_options(cli):
    out = cli("serve", "--help").stdout
    for option in (
        "--engine",
        "--host",
        "--port",
        "--api-keys",
        "--log-requests",
        "--log-to-catalog",
        "--tensor-parallel-size",
        "--template",
        "--max-batch-size",
    ):
        assert option in out


def test_bad_model_is_a_clean_error(cli, tmp_path):
    result = cli("serve", str(tmp_path / "nope"), expect=2)
    assert "not a folder" in result.stderr
    result = cli("serve", "ck-deadbeef", expect=2)
    assert "ck-deadbeef" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no model weights" in cli("serve", str(empty), expect=2).stderr


def test_serve_takes_one_model_and_keys_only_by_option(cli, tiny_model_dir):
    """No hidden positional for keys: a second argument is an error; keys go in --api-keys."""
    result = cli("serve", str(tiny_model_dir), "surprise", expect=2)
    assert "unexpected extra argument" in result.stderr
    help_text = cli("serve", "--help").stdout
    assert "OPENCHAT_API_KEYS" in help_text and "comma-separated" in help_text


def test_unknown_template_and_engine(cli, tiny_model_dir):
    assert "unknown template" in cli("serve", str(tiny_model_dir), "--template", "nope", expect=2).stderr
    assert "unknown engine" in cli("serve", str(tiny_model_dir), "--engine", "tgi", expect=2).stderr


def test_port_in_use_is_a_clean_error(cli, tiny_model_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = cli("serve", str(tiny_model_dir), "--port", str(port), expect=2)
    assert "cannot listen" in result.stderr


def test_api_keys_are_split_on_commas_and_spaces():
    assert _split_keys(["a,b", "c d", "a"]) == ["a", "b", "c", "d"]
    assert _split_keys(None) == []
