"""Serve fixtures: an in-process engine, and a second real server (uvicorn on 127.0.0.1 in a
thread) started with auth, request logs, the catalog and a small body limit."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

API_KEYS = ("key-one", "key-two")


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    """A TransformersEngine on the tiny model (not started: tests start it in their own loop)."""
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    tokenizer = load_tokenizer(tiny_model_dir)
    return TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=16)


class InProcessServer:
    def __init__(self, url: str, model: str, app, server, thread, log_path: Path, catalog, checkpoint_id: str):
        self.url = url
        self.base_url = url + "/v1"
        self.model = model
        self.app = app
        self.server = server
        self.thread = thread
        self.log_path = log_path
        self.catalog = catalog
        self.checkpoint_id = checkpoint_id


@contextlib.contextmanager
def serve_in_thread(app, **options):
    """Run `app` with our uvicorn settings (header deadline) on 127.0.0.1:<free port> in a
    thread; yields the base URL."""
    import uvicorn

    from openchat_cli.serve.connections import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    port = sock.getsockname()[1]
    options.setdefault("log_level", "warning")
    server = uvicorn.Server(uvicorn_config(app, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a loaded machine may take a while
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="session")
def guarded_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Like `openchat serve MODEL --api-keys key-one key-two --log-requests F --log-to-catalog
    --max-body-mb 0.0625 --max-n 4 --allow-origin http://ui.example`, run in this process so
    tests can look inside."""
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.app import ServerConfig, create_app
    from openchat_cli.serve.engines.base import eos_token_ids
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import get_template
    from store.catalog import open_catalog

    work = tmp_path_factory.mktemp("guarded")
    catalog = open_catalog(work / "catalog.db")
    checkpoint_id = catalog.add_checkpoint(path=tiny_model_dir, kind="base", template="openchat_3.5")
    tokenizer = load_tokenizer(tiny_model_dir)
    template = get_template("openchat_3.5")
    engine = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, max_batch_size=8)
    config = ServerConfig(
        model_name="guarded",
        template=template,
        stop_token_ids=eos_token_ids(tiny_model_dir, tokenizer, template.eot_token),
        aliases=(checkpoint_id,),
        api_keys=API_KEYS,
        max_n=4,
        max_body_bytes=64 * 1024,
        default_max_tokens=64,
        log_requests=work / "requests.jsonl",
        catalog=catalog,
        checkpoint_id=checkpoint_id,
        model_path=str(tiny_model_dir),
        allow_origins=("http://ui.example",),
        allowed_hosts=("127.0.0.1", "localhost", "[::1]"),
        auth_failure_limit=1000,
    )  # other tests send wrong keys on purpose: no lockout here
    app = create_app(engine, config)
    with serve_in_thread(app) as (url, server, thread):
        yield InProcessServer(url, "guarded", app, server, thread, work / "requests.jsonl", catalog, checkpoint_id)
