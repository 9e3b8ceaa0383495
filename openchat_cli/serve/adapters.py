"""`serve --lora NAME=ADAPTER`: which LoRA adapters to serve, and under which model ids.

Only the CLI's side lives here (names, folders, catalog ids); the engines load and check the
weights against the base (engines/lora_rows.py for transformers, vLLM's LoRARequest for vLLM).
"""

from __future__ import annotations

from openchat_cli.errors import OpenchatError

ADAPTER_CONFIG = "adapter_config.json"


def parse_lora_options(values: list[str], reserved: set[str]) -> dict[str, str]:
    """`NAME=FOLDER|ck-…` (or just `FOLDER|ck-…`, named after its checkpoint id or folder) →
    {model id: absolute adapter folder}, in the order given; refuses duplicates, names the base
    already answers to, and folders that are not LoRA adapters."""
    from openchat_cli import model_dir as model_folder

    adapters: dict[str, str] = {}
    for value in values:
        name, sep, ref = value.partition("=")
        if not sep:
            name, ref = "", value
        name, ref = name.strip(), ref.strip()
        if not ref:
            raise OpenchatError(f"--lora {value}: expected NAME=ADAPTER_DIR (or a ck-… id)")
        try:
            path, ckpt_id = model_folder.resolve_model(ref)
        except OpenchatError as exc:
            raise OpenchatError(f"--lora {value}: {exc}") from None
        path = path.resolve()
        if not (path / ADAPTER_CONFIG).exists():
            raise OpenchatError(
                f"--lora {value}: {path} is not a LoRA adapter (no {ADAPTER_CONFIG}); "
                f"serve a full model as the base instead"
            )
        if not name:
            name = ckpt_id or path.name
        if name in adapters or name in reserved:
            raise OpenchatError(f"--lora {value}: the model id '{name}' is already taken; pick another NAME")
        adapters[name] = str(path)
    return adapters
