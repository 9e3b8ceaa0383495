"""The checkpoint-dir contract shared by every stage: HF weights + tokenizer + openchat.json.

`openchat.json` says which conversation template the model speaks (and, for trained
checkpoints, which run and dataset made it), so `serve`, `data tokenize` and `train` need no
extra flags. The tokenizer hash lets the trainer refuse data tokenized with another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from openchat_cli.atomic import atomic_write_text
from openchat_cli.errors import OpenchatError

META_FILE = "openchat.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)


def resolve_model(ref: str | Path) -> tuple[Path, str | None]:
    """A model dir from a path or a catalog checkpoint id; returns (path, checkpoint id or None)."""
    from store.catalog import looks_like_id, open_catalog

    text = str(ref)
    if looks_like_id(text) and not Path(text).exists():
        catalog = open_catalog()
        row = catalog.get(text)
        if catalog.table_of(row["id"]) != "checkpoints":
            raise OpenchatError(f"'{text}' is a {catalog.table_of(row['id'])[:-1]}, not a checkpoint")
        return Path(row["path"]), row["id"]
    path = Path(text).expanduser()
    if not path.is_dir():
        raise OpenchatError(f"model '{text}' is not a folder (nor a checkpoint id in the catalog)")
    return path, None


def checkpoint_id_for(path: Path) -> str | None:
    """The catalog id recorded for a model dir, if the catalog knows it."""
    from store.catalog import open_catalog

    row = open_catalog().find_by_path("checkpoints", path)
    return row["id"] if row else None


def read_meta(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / META_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise OpenchatError(f"{path}: not valid JSON ({exc})") from None


def write_meta(model_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into openchat.json (written atomically)."""
    meta = {**read_meta(model_dir), **{k: v for k, v in fields.items() if v is not None}}
    atomic_write_text(Path(model_dir) / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta


def model_template(model_dir: Path, override: str | None = None) -> str:
    """The template a model speaks: the flag if given, else openchat.json, else an error."""
    if override:
        return override
    name = read_meta(model_dir).get("template")
    if not name:
        raise OpenchatError(f"{model_dir} has no {META_FILE} naming its template: pass --template")
    return name


def require_weights(model_dir: Path) -> None:
    if not any((Path(model_dir) / f).exists() for f in WEIGHT_FILES):
        raise OpenchatError(f"{model_dir} holds no model weights (looked for {', '.join(WEIGHT_FILES[:3])})")


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise OpenchatError(f"cannot load a tokenizer from {model_dir}: {exc}") from None


def tokenizer_hash(tokenizer: Any) -> str:
    """A stable fingerprint of a tokenizer's vocabulary and control tokens."""
    vocab = sorted(tokenizer.get_vocab().items())
    data = json.dumps({"vocab": vocab, "special": sorted(map(str, tokenizer.all_special_tokens))})
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def attach_template(tokenizer: Any, template: str) -> None:
    """Give a tokenizer the named template's Jinja chat_template, so `apply_chat_template` speaks it.

    The tokenizer's EOS is left as it is: generation stops at the template's end-of-turn token
    through the model's generation_config (`model add-tokens`) and the server's stop ids."""
    from openchat_cli.templates import get_template

    tokenizer.chat_template = get_template(template).jinja()
