"""`openchat model …`: make tiny local models, add control tokens, inspect a model dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer

from openchat_cli.atomic import temp_dir_beside
from openchat_cli.console import console, err_console, print_json, table
from openchat_cli.errors import OpenchatError
from openchat_cli.model_dir import (
    attach_template,
    load_tokenizer,
    read_meta,
    require_weights,
    resolve_model,
    tokenizer_hash,
    write_meta,
)
from openchat_cli.templates import DEFAULT_TEMPLATE, TEMPLATES, get_template

app = typer.Typer(no_args_is_help=True)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise OpenchatError(f"{out} already exists and is not empty (pass --force to replace it)")


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temp dir beside OUT to build a model dir in: renamed into place when the block ends
    (never a half-written model at OUT), removed when it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _register(catalog: Any, out: Path, **fields: Any) -> str:
    """Add the published model dir to the catalog; its openchat.json learns its checkpoint id."""
    ck = catalog.add_checkpoint(path=out, **fields)
    write_meta(out, checkpoint_id=ck)
    return ck


def _set_generation_eos(model, tokenizer, template_name: str) -> None:
    """Generation stops at the template's end-of-turn token as well as at EOS."""
    template = get_template(template_name)
    ids = [tokenizer.convert_tokens_to_ids(template.eot_token), tokenizer.eos_token_id]
    model.generation_config.eos_token_id = list(dict.fromkeys(i for i in ids if i is not None))
    model.generation_config.pad_token_id = tokenizer.pad_token_id


@app.command("init")
def init_command(
    out: Path = typer.Argument(..., help="Folder to create the model in."),
    tokenizer_corpus: Optional[Path] = typer.Option(
        None, "--tokenizer-corpus", help="Text file to train the BPE tokenizer on (default: a small built-in text)."
    ),
    size: str = typer.Option("tiny", "--size", help="tiny (~0.1M params) | small (~4M params)."),
    template: str = typer.Option(
        DEFAULT_TEMPLATE, "--template", help=f"Conversation template: {', '.join(TEMPLATES)}."
    ),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Override the size's vocabulary."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random weights."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
) -> None:
    """Train a byte-level BPE tokenizer locally and create a random Llama model (nothing downloads)."""
    from openchat_cli.model.tiny import SIZES, random_llama, read_corpus, train_tokenizer
    from store.catalog import open_catalog

    if size not in SIZES:
        raise OpenchatError(f"unknown --size '{size}': choose one of {', '.join(SIZES)}")
    get_template(template)
    if tokenizer_corpus is not None and not tokenizer_corpus.is_file():
        raise OpenchatError(f"tokenizer corpus {tokenizer_corpus} does not exist")
    _prepare_out(out, force)
    spec = SIZES[size]
    with err_console.status("training tokenizer and building the model…"):
        tokenizer = train_tokenizer(read_corpus(tokenizer_corpus), vocab_size or spec.vocab_size)
        attach_template(tokenizer, template)
        model = random_llama(tokenizer, spec, seed=seed)
        _set_generation_eos(model, tokenizer, template)
        params = sum(p.numel() for p in model.parameters())
        with _staged(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_meta(tmp, template=template, size=size, parameters=params, tokenizer_hash=tokenizer_hash(tokenizer))
    ck = _register(
        open_catalog(),
        out,
        kind="base",
        template=template,
        base_model=f"random-llama-{size}",
        metrics={"parameters": params, "vocab_size": len(tokenizer)},
    )
    if as_json:
        print_json(open_catalog().get(ck))
        return
    console.print(
        f"[green]created[/] {out} ({params:,} parameters, vocab {len(tokenizer)}, template {template}) as [bold]{ck}[/]"
    )


@app.command("add-tokens")
def add_tokens_command(
    model_ref: str = typer.Argument(..., metavar="MODEL", help="Model dir or checkpoint id."),
    out: Path = typer.Argument(..., help="Folder for the model with the new tokens."),
    tokens: list[str] = typer.Option([], "--token", help="Special token to add (repeatable)."),
    template: Optional[str] = typer.Option(
        None, "--template", help="Also add every control token of this template and save its chat_template."
    ),
    init: str = typer.Option(
        "mean",
        "--init",
        help="New embedding rows: mean (of the existing rows; OpenChat's choice for Llama) "
        "| normal (N(0, std^2); its choice for StarCoder).",
    ),
    std: float = typer.Option(0.02, "--std", help="Standard deviation for --init normal."),
    seed: int = typer.Option(0, "--seed", help="Seed for --init normal."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
) -> None:
    """Add special tokens to a model; new input and output embedding rows start at the mean of the
    existing ones (or drawn from N(0, std^2) with --init normal)."""
    from transformers import AutoModelForCausalLM

    from openchat_cli.model.tokens import INITS, add_special_tokens
    from store.catalog import open_catalog

    if init not in INITS:
        raise OpenchatError(f"unknown --init '{init}': choose one of {', '.join(INITS)}")
    if not std > 0:
        raise OpenchatError(f"--std must be positive (got {std})")
    src, src_id = resolve_model(model_ref)
    require_weights(src)
    wanted = list(tokens)
    if template:
        wanted += get_template(template).special_tokens
    if not wanted:
        raise OpenchatError("nothing to add: pass --token TOKEN (repeatable) or --template NAME")
    _prepare_out(out, force)
    tokenizer = load_tokenizer(src)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    added = add_special_tokens(model, tokenizer, wanted, init=init, std=std, seed=seed)
    template_name = template or read_meta(src).get("template")
    if template_name:
        attach_template(tokenizer, template_name)
        _set_generation_eos(model, tokenizer, template_name)
    meta = {k: v for k, v in read_meta(src).items() if k != "checkpoint_id"}
    meta.update(
        template=template_name,
        tokenizer_hash=tokenizer_hash(tokenizer),
        added_tokens=added,
        added_tokens_init=init if init == "mean" else f"normal(0, {std})",
    )
    with _staged(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, **meta)
    ck = _register(
        open_catalog(),
        out,
        kind="tokens-added",
        template=template_name,
        base_model=str(src),
        parent_id=src_id,
        metrics={"added_tokens": added, "vocab_size": len(tokenizer), "init": init},
    )
    if as_json:
        print_json(open_catalog().get(ck))
        return
    console.print(
        f"[green]added[/] {len(added)} token(s) {added} → {out} as [bold]{ck}[/]"
        + ("" if len(added) == len(set(wanted)) else " (the others were already there)")
    )


@app.command("info")
def info_command(
    model_ref: str = typer.Argument(..., metavar="MODEL", help="Model dir or checkpoint id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model dir's template, size, vocabulary and control tokens."""
    from transformers import AutoConfig

    path, ck = resolve_model(model_ref)
    config = AutoConfig.from_pretrained(str(path))
    tokenizer = load_tokenizer(path)
    meta = read_meta(path)
    info = {
        "path": str(path),
        "checkpoint_id": ck or meta.get("checkpoint_id"),
        "architecture": (config.architectures or [config.model_type])[0],
        "template": meta.get("template"),
        "vocab_size": len(tokenizer),
        "hidden_size": getattr(config, "hidden_size", None),
        "layers": getattr(config, "num_hidden_layers", None),
        "max_positions": getattr(config, "max_position_embeddings", None),
        "special_tokens": tokenizer.all_special_tokens,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "has_chat_template": bool(tokenizer.chat_template),
        "meta": meta,
    }
    if as_json:
        print_json(info)
        return
    console.print(table(str(path), ["field", "value"], [(k, v) for k, v in info.items() if k != "meta"]))


@app.command("merge-lora")
def merge_lora_command(
    adapter_ref: str = typer.Argument(
        ..., metavar="ADAPTER_DIR", help="LoRA adapter dir (from `openchat train --lora`) or its checkpoint id."
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="Folder for the merged full model."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model dir or id (default: the one the adapter was trained from)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
) -> None:
    """Fold a LoRA adapter into its base model: a plain model dir that serves without peft."""
    from openchat_cli.model.lora import adapter_base, merge_adapter
    from store.catalog import open_catalog

    src, src_id = resolve_model(adapter_ref)
    recorded_base = adapter_base(src)  # also refuses a dir that is not an adapter
    meta = read_meta(src)
    base_ref = base or meta.get("base_checkpoint_id") or meta.get("base_model") or recorded_base
    if not base_ref:
        raise OpenchatError(f"{src} does not say which base model it adapts: pass --base")
    try:
        base_dir, base_id = resolve_model(base_ref)
    except OpenchatError as exc:
        raise OpenchatError(f"base model of {src}: {exc.message} (pass --base)") from None
    require_weights(base_dir)
    _prepare_out(out, force)
    src_id = src_id or meta.get("checkpoint_id")
    base_id = base_id or read_meta(base_dir).get("checkpoint_id")
    with _staged(out) as tmp:
        with err_console.status("merging the adapter into the base weights…"):
            tokenizer = merge_adapter(src, base_dir, tmp)
        template_name = meta.get("template") or read_meta(base_dir).get("template")
        merged_meta = {k: v for k, v in meta.items() if k not in ("checkpoint_id", "lora")}
        merged_meta.update(
            template=template_name,
            tokenizer_hash=tokenizer_hash(tokenizer),
            base_model=str(base_dir),
            merged_from=src_id or str(src),
        )
        write_meta(tmp, **merged_meta)
    catalog = open_catalog()
    ck = _register(
        catalog,
        out,
        kind="merged",
        template=template_name,
        base_model=str(base_dir),
        run_id=meta.get("run_id"),
        dataset_id=meta.get("dataset_id"),
        step=meta.get("step"),
        parent_id=src_id,
        metrics={"adapter": str(src)},
    )
    catalog.link(ck, base_id, "derived-from")
    if as_json:
        print_json(catalog.get(ck))
        return
    console.print(f"[green]merged[/] {src} into {base_dir} → {out} as [bold]{ck}[/]")


@app.command("extend-context")
def extend_context_command(
    model_ref: str = typer.Argument(..., metavar="MODEL", help="Model dir or checkpoint id."),
    out: Path = typer.Argument(..., metavar="OUT", help="Folder for the model with the longer context."),
    max_len: int = typer.Option(..., "--max-len", help="The new context length in tokens."),
    rope_scaling: str = typer.Option(
        "none",
        "--rope-scaling",
        help="none (extrapolate, as OpenChat-8192 did) | linear (position interpolation) "
        "| dynamic (NTK-aware, only past the old length) | yarn.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
) -> None:
    """Give a RoPE model a longer context: config, tokenizer and openchat.json follow; weights are shared."""
    import json

    from transformers import AutoConfig

    from openchat_cli.model.context import ROPE_SCALINGS, extended_config
    from store.catalog import open_catalog

    if rope_scaling not in ROPE_SCALINGS:
        raise OpenchatError(f"unknown --rope-scaling '{rope_scaling}': choose one of {', '.join(ROPE_SCALINGS)}")
    src, src_id = resolve_model(model_ref)
    require_weights(src)
    try:
        config = json.loads((src / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise OpenchatError(f"{src / 'config.json'}: cannot read it ({exc})") from None
    try:
        new_config, facts = extended_config(config, max_len, rope_scaling)
    except OpenchatError as exc:
        raise OpenchatError(f"{src}: {exc.message}") from None
    _prepare_out(out, force)
    src_id = src_id or read_meta(src).get("checkpoint_id")
    with _staged(out) as tmp:
        _copy_model_files(src, tmp)
        (tmp / "config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
        try:
            AutoConfig.from_pretrained(str(tmp))  # transformers validates the rope parameters
        except (OSError, ValueError, KeyError) as exc:
            raise OpenchatError(f"the extended config does not load: {exc}") from None
        tokenizer = load_tokenizer(src)
        tokenizer.model_max_length = max_len
        tokenizer.save_pretrained(tmp)
        meta = {k: v for k, v in read_meta(src).items() if k != "checkpoint_id"}
        meta.update(facts, extended_from=src_id or str(src))
        write_meta(tmp, **meta)
    catalog = open_catalog()
    ck = _register(
        catalog,
        out,
        kind="context-extended",
        template=meta.get("template"),
        base_model=str(src),
        parent_id=src_id,
        metrics=facts,
    )
    if as_json:
        print_json(catalog.get(ck))
        return
    console.print(
        f"[green]extended[/] {src} from {facts['original_context_length']:,} to {max_len:,} tokens "
        f"({rope_scaling} RoPE scaling, factor {facts['rope_factor']:g}) → {out} as [bold]{ck}[/]"
    )


def _copy_model_files(src: Path, dest: Path) -> None:
    """Copy a model dir; weight files are hard-linked where the filesystem allows (never rewritten in
    place, so sharing them is safe), everything else is copied (it may be rewritten)."""
    import os

    for item in src.iterdir():
        target = dest / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        elif item.suffix in (".safetensors", ".bin", ".pt"):
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
        else:
            shutil.copy2(item, target)


@app.command("export")
def export_command(
    model_ref: str = typer.Argument(..., metavar="MODEL", help="Model dir or checkpoint id (Llama architecture)."),
    out: Path = typer.Option(..., "--output", "-o", help="The .gguf file to write."),
    fmt: str = typer.Option("gguf", "--format", help="gguf (llama.cpp, Ollama)."),
    out_type: str = typer.Option("f16", "--outtype", help="Weight type: f32 | f16 | bf16 | q8_0 (norms stay f32)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog entry as JSON."),
) -> None:
    """Write a checkpoint as one GGUF file with its tokenizer and chat template, for llama.cpp and Ollama."""
    import os

    from openchat_cli.atomic import temp_file_beside
    from openchat_cli.model.context import context_length
    from openchat_cli.model.gguf_export import OUT_TYPES, export_gguf
    from openchat_cli.templates import get_template
    from store.catalog import open_catalog

    if fmt != "gguf":
        raise OpenchatError(f"unknown --format '{fmt}': only gguf is supported")
    if out_type not in OUT_TYPES:
        raise OpenchatError(f"unknown --outtype '{out_type}': choose one of {', '.join(OUT_TYPES)}")
    src, src_id = resolve_model(model_ref)
    require_weights(src)
    if out.exists() and not force:
        raise OpenchatError(f"{out} already exists (pass --force to replace it)")
    meta = read_meta(src)
    src_id = src_id or meta.get("checkpoint_id")
    eot = get_template(meta["template"]).eot_token if meta.get("template") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(out)
    os.close(fd)
    try:
        with err_console.status(f"writing {out.name}…") as status:
            summary = export_gguf(
                src,
                Path(tmp),
                out_type=out_type,
                name=src.name,
                eot_token=eot,
                context=context_length(src),
                on_tensor=lambda name: status.update(f"writing {out.name}: {name}"),
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    catalog = open_catalog()
    ck = catalog.add_checkpoint(
        path=out,
        kind="gguf",
        template=meta.get("template"),
        base_model=str(src),
        parent_id=src_id,
        metrics={
            "format": "gguf",
            "outtype": out_type,
            "tensors": summary.tensors,
            "bytes": summary.bytes,
            "pre_tokenizer": summary.pre_tokenizer,
        },
    )
    if as_json:
        print_json(catalog.get(ck))
        return
    console.print(
        f"[green]exported[/] {src} → {out} ({summary.bytes / 1e6:.1f} MB, {summary.tensors} tensors, "
        f"{out_type}, pre-tokenizer {summary.pre_tokenizer}) as [bold]{ck}[/]"
    )
