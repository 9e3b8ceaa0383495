"""`openchat serve MODEL`: an OpenAI-compatible server for a checkpoint (FastAPI + uvicorn)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import List, Optional

import typer

from openchat_cli.console import console, err_console
from openchat_cli.endpoints import DEFAULT_PORT
from openchat_cli.errors import OpenchatError

API_KEYS_ENV = "OPENCHAT_API_KEYS"


def _split_keys(values: list[str] | None) -> list[str]:
    keys: list[str] = []
    for value in values or []:
        for key in value.replace(",", " ").split():
            if key and key not in keys:
                keys.append(key)
    return keys


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP,
    # and without it every small SSE write waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OpenchatError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve_command(
    model: str = typer.Argument(..., help="Model folder or catalog checkpoint id (ck-…)."),
    extra_keys: Optional[List[str]] = typer.Argument(
        None, hidden=True, metavar="K2", help="More API keys after --api-keys K1 K2 …"),
    engine: str = typer.Option("auto", "--engine", help="auto (vLLM on a GPU when installed, "
                               "else transformers), vllm or transformers."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 to expose it)."),
    port: int = typer.Option(DEFAULT_PORT, "--port", help="Port (0 picks a free one)."),
    template: Optional[str] = typer.Option(None, "--template",
                                           help="Override the template named in openchat.json."),
    served_model_name: Optional[str] = typer.Option(
        None, "--served-model-name", help="Name clients pass as `model` (default: the checkpoint "
        "id if the catalog knows it, else the folder name)."),
    api_keys: Optional[List[str]] = typer.Option(
        None, "--api-keys", help=f"Require `Authorization: Bearer KEY` on /v1/* (put MODEL first: "
        f"--api-keys K1 K2 …, or comma-separated, or ${API_KEYS_ENV})."),
    log_requests: Optional[Path] = typer.Option(None, "--log-requests",
                                                help="Append one JSON line per request to FILE."),
    log_to_catalog: bool = typer.Option(False, "--log-to-catalog",
                                        help="Record every request in the catalog's requests table."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", min=1,
                                       help="Most sequences decoded together (transformers engine)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", min=16,
                                                help="Context length (default: the model's)."),
    default_max_tokens: Optional[int] = typer.Option(
        None, "--default-max-tokens", min=1,
        help="max_tokens when a request gives none (default: the rest of the context)."),
    max_n: int = typer.Option(16, "--max-n", min=1, help="Largest `n` accepted."),
    max_body_mb: float = typer.Option(4.0, "--max-body-mb", help="Largest request body, in MiB."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
    device: str = typer.Option("auto", "--device",
                               help="transformers engine: cpu, cuda, cuda:1 … (auto: cuda if present)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch."),
    tensor_parallel_size: int = typer.Option(1, "--tensor-parallel-size", min=1, help="vLLM: GPUs."),
    gpu_memory_utilization: Optional[float] = typer.Option(
        None, "--gpu-memory-utilization", help="vLLM: fraction of GPU memory to use."),
    engine_arg: Optional[List[str]] = typer.Option(
        None, "--engine-arg", help="vLLM engine argument KEY=VALUE (repeatable), e.g. "
        "--engine-arg enable_prefix_caching=true."),
    allow_origin: Optional[List[str]] = typer.Option(
        None, "--allow-origin", help="Allow browser pages from this origin to call the API (CORS; "
        "repeatable, '*' for any)."),
    allowed_hosts: Optional[List[str]] = typer.Option(
        None, "--allowed-hosts", help="Host header names to answer besides 127.0.0.1, localhost and "
        "[::1] (repeatable or comma-separated; '*' for any). Guards against DNS rebinding."),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", min=0.1, help="Seconds a client has to send a request's headers "
        "(slow clients are disconnected)."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", min=0.1,
                                       help="Seconds a client has to send a request's body (408)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    ui: Optional[bool] = typer.Option(None, "--ui/--no-ui", help="Serve the browser chat page at / "
                                      "(default: on for a loopback --host, off otherwise)."),
) -> None:
    """Serve a checkpoint behind an OpenAI-compatible API (chat, completions, models, metrics)."""
    # One prompt at a time: the tokenizers thread pool only adds latency here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from openchat_cli import checkpoint
    from openchat_cli.serve.engines.base import eos_token_ids, pick_engine_kind
    from openchat_cli.templates import check_tokenizer, get_template

    from openchat_cli.serve.guard import LOOPBACK_HOSTS, is_loopback

    kind = pick_engine_kind(engine)
    keys = _split_keys(api_keys)
    if extra_keys:
        if not keys:
            raise OpenchatError(f"unexpected argument(s) {' '.join(extra_keys)}: serve takes one MODEL")
        keys += [k for k in _split_keys(extra_keys) if k not in keys]
    if not keys:
        keys = _split_keys([os.environ.get(API_KEYS_ENV, "")])
    hosts = _split_keys(allowed_hosts)
    if "*" in hosts:
        host_names: tuple[str, ...] | None = None
    elif is_loopback(host):
        host_names = (*LOOPBACK_HOSTS, *hosts)
    else:
        host_names = tuple(hosts) or None  # reachable under names we cannot know
    if not is_loopback(host) and not keys:
        err_console.print(f"[bold yellow]warning[/]: --host {host} exposes the API to the network "
                          f"without API keys: anyone who reaches this machine can use the model. "
                          f"Add --api-keys KEY (or ${API_KEYS_ENV}).", highlight=False,
                          soft_wrap=True)

    if log_to_catalog:  # a damaged or locked catalog refuses now, not after the model loads
        from store.catalog import open_catalog

        open_catalog().close()
    try:
        model_dir, ckpt_id = checkpoint.resolve_model(model)
    except OpenchatError as exc:
        hint = " (with several --api-keys, put MODEL first)" if extra_keys else ""
        raise OpenchatError(exc.message + hint) from None
    model_dir = model_dir.resolve()
    checkpoint.require_weights(model_dir)
    if ckpt_id is None:
        from openchat_cli.home import catalog_path

        if catalog_path().exists():
            ckpt_id = checkpoint.checkpoint_id_for(model_dir)
    tmpl = get_template(checkpoint.template_name(model_dir, template))
    tokenizer = checkpoint.load_tokenizer(model_dir)
    check_tokenizer(tmpl, tokenizer)

    stop_ids = eos_token_ids(model_dir, tokenizer, tmpl.eot_token)
    name = served_model_name or ckpt_id or model_dir.name
    aliases = tuple(a for a in {model, str(model_dir), model_dir.name, ckpt_id or ""} if a and a != name)

    # Claim the port before the (slow) model load so a clash fails fast; listen once loaded.
    sock = _bind(host, port)
    try:
        _run(sock, kind=kind, model_dir=model_dir, ckpt_id=ckpt_id, name=name, aliases=aliases,
             tmpl=tmpl, tokenizer=tokenizer, stop_ids=stop_ids, keys=keys, host=host,
             engine_arg=engine_arg, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
             tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, device=device,
             max_batch_size=max_batch_size, threads=threads, log_to_catalog=log_to_catalog,
             max_n=max_n, max_body_mb=max_body_mb, default_max_tokens=default_max_tokens,
             log_requests=log_requests, log_level=log_level, allow_origin=allow_origin,
             host_names=host_names, header_timeout=header_timeout, body_timeout=body_timeout,
             ui=is_loopback(host) if ui is None else ui)
    finally:
        sock.close()


def _run(sock: socket.socket, *, kind: str, model_dir: Path, ckpt_id: str | None, name: str,
         aliases: tuple[str, ...], tmpl, tokenizer, stop_ids: tuple[int, ...], keys: list[str],
         host: str, engine_arg, gpu_memory_utilization, dtype: str, tensor_parallel_size: int,
         max_model_len, device: str, max_batch_size: int, threads, log_to_catalog: bool,
         max_n: int, max_body_mb: float, default_max_tokens, log_requests, log_level: str,
         allow_origin, host_names: tuple[str, ...] | None, header_timeout: float,
         body_timeout: float, ui: bool) -> None:
    """Load the engine, build the app, print where it serves and run uvicorn on `sock`."""
    err_console.print(f"loading {model_dir} with the {kind} engine …", highlight=False)
    if kind == "vllm":
        from openchat_cli.serve.engines.vllm_engine import VLLMEngine, parse_engine_args

        options = parse_engine_args(engine_arg or [])
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        if dtype != "auto":
            options["dtype"] = dtype
        eng = VLLMEngine(model_dir, tokenizer=tokenizer, tensor_parallel_size=tensor_parallel_size,
                         max_model_len=max_model_len, served_model_name=name, **options)
    else:
        if engine_arg:
            raise OpenchatError("--engine-arg is for the vLLM engine")
        from openchat_cli.serve.engines.transformers_engine import TransformersEngine

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        eng = TransformersEngine(model_dir, tokenizer=tokenizer, device=device, dtype=dtype,
                                 max_batch_size=max_batch_size, max_model_len=max_model_len,
                                 threads=threads)

    catalog = None
    if log_to_catalog:
        from store.catalog import open_catalog

        catalog = open_catalog()

    from openchat_cli.serve.app import ServerConfig, create_app

    config = ServerConfig(
        model_name=name, template=tmpl, stop_token_ids=stop_ids, aliases=aliases,
        api_keys=tuple(keys), max_n=max_n, max_body_bytes=int(max_body_mb * 1024 * 1024),
        default_max_tokens=default_max_tokens, log_requests=log_requests, catalog=catalog,
        checkpoint_id=ckpt_id, model_path=str(model_dir), allow_origins=tuple(allow_origin or ()),
        allowed_hosts=host_names, body_timeout_s=body_timeout, ui=ui)
    app = create_app(eng, config)

    import uvicorn

    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    base = f"http://{_url_host(host)}:{bound_port}"
    console.print(f"[bold green]openchat serve[/]: [bold]{name}[/] ({tmpl.name} template, "
                  f"{kind} engine, context {eng.context_length})", highlight=False, soft_wrap=True)
    console.print(f"  OpenAI API  {base}/v1" + ("   (API keys required)" if keys else ""),
                  highlight=False, soft_wrap=True)
    if ui:
        console.print(f"  chat page   {base}/", highlight=False, soft_wrap=True)
    console.print(f"  schema      {base}/openapi.json    health {base}/health    metrics {base}/metrics",
                  highlight=False, soft_wrap=True)
    if host_names is not None:
        console.print(f"  answers to  Host: {', '.join(host_names)} (--allowed-hosts adds names)",
                      highlight=False, soft_wrap=True)
    sys.stdout.flush()
    from openchat_cli.serve.connections import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, header_timeout_s=header_timeout, log_level=log_level,
                                           timeout_graceful_shutdown=5, timeout_keep_alive=30))
    try:
        server.run(sockets=[sock])
    finally:
        if catalog is not None:
            catalog.close()
