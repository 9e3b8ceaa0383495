"""`openchat serve MODEL`: an OpenAI-compatible server for a checkpoint (FastAPI + uvicorn)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated, Optional

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
    model: Annotated[str, typer.Argument(help="Model folder or catalog checkpoint id (ck-…).")],
    engine: Annotated[
        str,
        typer.Option("--engine", help="auto (vLLM on a GPU when installed, else transformers), vllm or transformers."),
    ] = "auto",
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 to expose it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = DEFAULT_PORT,
    template: Annotated[
        Optional[str], typer.Option("--template", help="Override the template named in openchat.json.")
    ] = None,
    served_model_name: Annotated[
        Optional[str],
        typer.Option(
            "--served-model-name",
            help="Name clients pass as `model` (default: the checkpoint "
            "id if the catalog knows it, else the folder name).",
        ),
    ] = None,
    api_keys: Annotated[
        Optional[list[str]],
        typer.Option(
            "--api-keys",
            envvar=API_KEYS_ENV,
            show_envvar=True,
            metavar="KEYS",
            help="Require `Authorization: Bearer KEY` on /v1/*: comma-separated, or repeat the option.",
        ),
    ] = None,
    log_requests: Annotated[
        Optional[Path], typer.Option("--log-requests", help="Append one JSON line per request to FILE.")
    ] = None,
    log_to_catalog: Annotated[
        bool, typer.Option("--log-to-catalog", help="Record every request in the catalog's requests table.")
    ] = False,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, help="Most sequences decoded together (transformers engine).")
    ] = 64,
    max_model_len: Annotated[
        Optional[int], typer.Option("--max-model-len", min=16, help="Context length (default: the model's).")
    ] = None,
    default_max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--default-max-tokens",
            min=1,
            help="max_tokens when a request gives none (default: the rest of the context).",
        ),
    ] = None,
    max_n: Annotated[int, typer.Option("--max-n", min=1, help="Largest `n` accepted.")] = 16,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body, in MiB.")] = 4.0,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    quantize: Annotated[
        str,
        typer.Option(
            "--quantize",
            help="transformers engine: none; int8 (CPU: PyTorch's "
            "dynamic int8, GPU: bitsandbytes 8-bit); int8-weight-only (torchao, the [torchao] extra); int4 (GPU: "
            "bitsandbytes NF4). vLLM: use --engine-arg quantization=….",
        ),
    ] = "none",
    lora: Annotated[
        Optional[list[str]],
        typer.Option(
            "--lora",
            metavar="NAME=ADAPTER",
            help="Serve a LoRA adapter "
            "(folder or ck-… id from `train --lora`) unmerged as model NAME, batched with the base (repeatable).",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="transformers engine: cpu, cuda, cuda:1 … (auto: cuda if present).")
    ] = "auto",
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch.")] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", min=1, help="vLLM: GPUs.")] = 1,
    gpu_memory_utilization: Annotated[
        Optional[float], typer.Option("--gpu-memory-utilization", help="vLLM: fraction of GPU memory to use.")
    ] = None,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="transformers engine: run the model in the API process. By "
            "default it runs in its own process (HTTP and tokenization stay here, so neither waits on "
            "the other). vLLM always runs its own engine-core process.",
        ),
    ] = False,
    engine_arg: Annotated[
        Optional[list[str]],
        typer.Option(
            "--engine-arg",
            help="vLLM engine argument KEY=VALUE (repeatable), e.g. --engine-arg enable_prefix_caching=true.",
        ),
    ] = None,
    allow_origin: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-origin",
            help="Allow browser pages from this origin to call the API (CORS; repeatable, '*' for any).",
        ),
    ] = None,
    allowed_hosts: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allowed-hosts",
            help="Host header names to answer besides 127.0.0.1, localhost and "
            "[::1] (repeatable or comma-separated; '*' for any). Guards against DNS rebinding.",
        ),
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            min=0.1,
            help="Seconds a client has to send a request's headers (slow clients are disconnected).",
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.1, help="Seconds a client has to send a request's body (408).")
    ] = 60.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    ui: Annotated[
        str, typer.Option("--ui", help="The browser chat page at /: auto (on for a loopback --host), on or off.")
    ] = "auto",
) -> None:
    """Serve a checkpoint behind an OpenAI-compatible API (chat, completions, models, metrics)."""
    # One prompt at a time: the tokenizers thread pool only adds latency here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from openchat_cli import model_dir as model_folder
    from openchat_cli.serve.engines.base import eos_token_ids, pick_engine_kind
    from openchat_cli.serve.guard import LOOPBACK_HOSTS, is_loopback
    from openchat_cli.templates import check_tokenizer, get_template

    if ui not in ("auto", "on", "off"):
        raise OpenchatError(f"--ui must be auto, on or off, not '{ui}'")
    kind = pick_engine_kind(engine)
    keys = _split_keys(api_keys)
    hosts = _split_keys(allowed_hosts)
    if "*" in hosts:
        host_names: tuple[str, ...] | None = None
    elif is_loopback(host):
        host_names = (*LOOPBACK_HOSTS, *hosts)
    else:
        host_names = tuple(hosts) or None  # reachable under names we cannot know
    if not is_loopback(host) and not keys:
        err_console.print(
            f"[bold yellow]warning[/]: --host {host} exposes the API to the network "
            f"without API keys: anyone who reaches this machine can use the model. "
            f"Add --api-keys KEY (or ${API_KEYS_ENV}).",
            highlight=False,
            soft_wrap=True,
        )

    if log_to_catalog:  # a damaged or locked catalog refuses now, not after the model loads
        from store.catalog import open_catalog

        open_catalog().close()
    model_dir, ckpt_id = model_folder.resolve_model(model)
    model_dir = model_dir.resolve()
    model_folder.require_weights(model_dir)
    if ckpt_id is None:
        from openchat_cli.home import catalog_path

        if catalog_path().exists():
            ckpt_id = model_folder.checkpoint_id_for(model_dir)
    tmpl = get_template(model_folder.model_template(model_dir, template))
    tokenizer = model_folder.load_tokenizer(model_dir)
    check_tokenizer(tmpl, tokenizer)

    stop_ids = eos_token_ids(model_dir, tokenizer, tmpl.eot_token)
    name = served_model_name or ckpt_id or model_dir.name
    aliases = tuple(a for a in {model, str(model_dir), model_dir.name, ckpt_id or ""} if a and a != name)
    from openchat_cli.serve.adapters import parse_lora_options

    adapters = parse_lora_options(lora or [], reserved={name, *aliases})
    if quantize not in ("none", "") and kind == "vllm":
        raise OpenchatError(
            "--quantize is for the transformers engine; vLLM quantizes with "
            "--engine-arg quantization=… (e.g. fp8 or bitsandbytes)"
        )

    # Claim the port before the (slow) model load so a clash fails fast; listen once loaded.
    sock = _bind(host, port)
    try:
        _run(
            sock,
            kind=kind,
            model_dir=model_dir,
            ckpt_id=ckpt_id,
            name=name,
            aliases=aliases,
            tmpl=tmpl,
            tokenizer=tokenizer,
            stop_ids=stop_ids,
            keys=keys,
            host=host,
            engine_arg=engine_arg,
            engine_process=not in_process,
            quantize=quantize,
            adapters=adapters,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            device=device,
            max_batch_size=max_batch_size,
            threads=threads,
            log_to_catalog=log_to_catalog,
            max_n=max_n,
            max_body_mb=max_body_mb,
            default_max_tokens=default_max_tokens,
            log_requests=log_requests,
            log_level=log_level,
            allow_origin=allow_origin,
            host_names=host_names,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            ui=is_loopback(host) if ui == "auto" else ui == "on",
        )
    finally:
        sock.close()


def _run(
    sock: socket.socket,
    *,
    kind: str,
    model_dir: Path,
    ckpt_id: str | None,
    name: str,
    aliases: tuple[str, ...],
    tmpl,
    tokenizer,
    stop_ids: tuple[int, ...],
    keys: list[str],
    host: str,
    engine_arg,
    engine_process: bool,
    quantize: str,
    adapters: dict[str, str],
    gpu_memory_utilization,
    dtype: str,
    tensor_parallel_size: int,
    max_model_len,
    device: str,
    max_batch_size: int,
    threads,
    log_to_catalog: bool,
    max_n: int,
    max_body_mb: float,
    default_max_tokens,
    log_requests,
    log_level: str,
    allow_origin,
    host_names: tuple[str, ...] | None,
    header_timeout: float,
    body_timeout: float,
    ui: bool,
) -> None:
    """Load the engine, build the app, print where it serves and run uvicorn on `sock`."""
    err_console.print(f"loading {model_dir} with the {kind} engine …", highlight=False)
    options = _engine_options(
        kind,
        name=name,
        engine_arg=engine_arg,
        dtype=dtype,
        device=device,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        max_batch_size=max_batch_size,
        threads=threads,
        quantize=quantize,
        adapters=adapters,
    )
    engine_death: list[str] = []
    server = None

    def on_engine_death(reason: str) -> None:
        """Fail open requests (the client did that), then stop serving: exit non-zero so a
        supervisor restarts the whole server, as vLLM's does on EngineDeadError."""
        engine_death.append(reason)
        if server is not None:
            server.should_exit = True

    if kind == "transformers" and engine_process:
        from openchat_cli.serve.engines.process_client import EngineProcessClient

        eng = EngineProcessClient(kind, model_dir, tokenizer=tokenizer, options=options, on_death=on_engine_death)
    else:
        from openchat_cli.serve.engines.factory import build_engine

        eng = build_engine(kind, model_dir, tokenizer, options)

    catalog = None
    if log_to_catalog:
        from store.catalog import open_catalog

        catalog = open_catalog()

    from openchat_cli.serve.app import ServerConfig, create_app

    config = ServerConfig(
        model_name=name,
        template=tmpl,
        stop_token_ids=stop_ids,
        aliases=aliases,
        api_keys=tuple(keys),
        max_n=max_n,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        default_max_tokens=default_max_tokens,
        log_requests=log_requests,
        catalog=catalog,
        checkpoint_id=ckpt_id,
        model_path=str(model_dir),
        allow_origins=tuple(allow_origin or ()),
        adapters=tuple(adapters.items()),
        allowed_hosts=host_names,
        body_timeout_s=body_timeout,
        ui=ui,
    )
    app = create_app(eng, config)

    import uvicorn

    sock.listen(2048)
    bound_port = sock.getsockname()[1]
    base = f"http://{_url_host(host)}:{bound_port}"
    console.print(
        f"[bold green]openchat serve[/]: [bold]{name}[/] ({tmpl.name} template, "
        f"{kind} engine, context {eng.context_length})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        f"  OpenAI API  {base}/v1" + ("   (API keys required)" if keys else ""), highlight=False, soft_wrap=True
    )
    described = eng.describe()
    if described.get("quantized"):
        console.print(
            f"  quantized   {described['quantized']} ({described.get('weight_bytes', 0) / 2**20:.1f} MiB of weights)",
            highlight=False,
            soft_wrap=True,
        )
    for adapter_name, adapter_dir in adapters.items():
        console.print(f"  LoRA        {adapter_name}  ({adapter_dir})", highlight=False, soft_wrap=True)
    if ui:
        console.print(f"  chat page   {base}/", highlight=False, soft_wrap=True)
    console.print(
        f"  schema      {base}/openapi.json    health {base}/health    metrics {base}/metrics",
        highlight=False,
        soft_wrap=True,
    )
    if host_names is not None:
        console.print(
            f"  answers to  Host: {', '.join(host_names)} (--allowed-hosts adds names)", highlight=False, soft_wrap=True
        )
    sys.stdout.flush()
    from openchat_cli.serve.connections import uvicorn_config

    server = uvicorn.Server(
        uvicorn_config(
            app,
            header_timeout_s=header_timeout,
            log_level=log_level,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=30,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        if catalog is not None:
            catalog.close()
    if engine_death:
        raise OpenchatError(f"{engine_death[0]}; the server stopped (restart it to serve again)")


def _engine_options(
    kind: str,
    *,
    name: str,
    engine_arg,
    dtype: str,
    device: str,
    gpu_memory_utilization,
    tensor_parallel_size: int,
    max_model_len,
    max_batch_size: int,
    threads,
    quantize: str = "none",
    adapters: dict[str, str] | None = None,
) -> dict:
    """The CLI's engine flags as `factory.build_engine` options (plain values: they may cross
    to the engine process)."""
    if kind == "vllm":
        from openchat_cli.serve.engines.vllm_engine import parse_engine_args

        options = parse_engine_args(engine_arg or [])
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        if dtype != "auto":
            options["dtype"] = dtype
        options.update(tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len, served_model_name=name)
        if adapters:
            options["adapters"] = dict(adapters)
        return options
    if engine_arg:
        raise OpenchatError("--engine-arg is for the vLLM engine")
    return {
        "device": device,
        "dtype": dtype,
        "max_batch_size": max_batch_size,
        "max_model_len": max_model_len,
        "threads": threads,
        "quantize": quantize,
        "adapters": dict(adapters or {}),
    }
