"""LoRA adapters served unmerged: each token of a batched forward gets its own adapter (or none).

Why not peft's `PeftModel(..., adapter_names=[...])`: it routes per batch row, but the engine's
packed prefill puts several prompts in ONE row (prefill.py), and wrapping the model would also
change the forward the engine (and its other maintainers) rely on. Instead every adapted Linear
gets a forward hook that adds `scale · (x Aᵀ) Bᵀ` to the rows of tokens routed to each adapter;
the engine says which tokens those are before each forward (`route`). Requests for the base
pay nothing beyond the index bookkeeping; a batch with k adapters pays k small low-rank matmuls
per adapted layer, on the routed tokens only.

Adapters are peft's save format (adapter_config.json + adapter_model.safetensors), what
`openchat train --lora` writes. They are checked against the base when loaded: every adapted
module must exist and be a Linear with the adapter's input/output sizes, else the server refuses
to start with an error naming the adapter.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.serve.engines.base import EngineError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoraAdapter:
    """One adapter's low-rank pairs, by module name of the base model."""

    name: str
    path: Path
    index: int  # 1-based; 0 means "the base model" in routing
    scale: float
    recorded_base: str | None = None  # adapter_config.json's base_model_name_or_path
    pairs: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # module → (A [r, in], B [out, r])

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.pairs.values()), default=0)


def _fail(name: str, path: Path, why: str) -> EngineError:
    return EngineError(f"LoRA adapter '{name}' ({path}): {why}")


def read_adapter(name: str, path: Path, index: int) -> LoraAdapter:
    """The adapter's config and weights, refused with a clear error when we cannot serve it
    exactly (DoRA, per-module rank patterns, extra full weights, embedding adapters)."""
    import torch

    path = Path(path)
    config_path = path / ADAPTER_CONFIG
    if not config_path.exists():
        raise _fail(name, path, f"not a LoRA adapter (no {ADAPTER_CONFIG})")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise _fail(name, path, f"{ADAPTER_CONFIG} is not valid JSON ({exc})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise _fail(name, path, f"peft_type {config.get('peft_type')!r} is not LoRA")
    for unsupported in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(unsupported):
            raise _fail(
                name,
                path,
                f"{unsupported} is not supported when serving unmerged; "
                f"merge it with `openchat model merge-lora` and serve the result",
            )
    if config.get("fan_in_fan_out"):
        raise _fail(name, path, "fan_in_fan_out (Conv1D layers) is not supported when serving unmerged")
    r = int(config.get("r") or 0)
    alpha = float(config.get("lora_alpha") or r)
    if r <= 0:
        raise _fail(name, path, f"{ADAPTER_CONFIG}: r must be a positive integer")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r

    weights = next((path / f for f in ADAPTER_WEIGHTS if (path / f).exists()), None)
    if weights is None:
        raise _fail(name, path, f"no {' or '.join(ADAPTER_WEIGHTS)}")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(weights))
    else:
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
    halves: dict[str, dict[str, Any]] = {}
    extra = []
    for key, tensor in tensors.items():
        found = _KEY.match(key)
        if found is None:
            extra.append(key)
            continue
        halves.setdefault(found["module"], {})[found["part"]] = tensor
    if extra:
        shown = ", ".join(extra[:3]) + (" …" if len(extra) > 3 else "")
        raise _fail(
            name,
            path,
            f"holds weights that are not LoRA pairs ({shown}); merge it with "
            f"`openchat model merge-lora` and serve the result",
        )
    adapter = LoraAdapter(
        name=name, path=path, index=index, scale=scale, recorded_base=config.get("base_model_name_or_path")
    )
    for module, parts in halves.items():
        if set(parts) != {"A", "B"}:
            raise _fail(name, path, f"{module}: lora_A and lora_B must both be present")
        a, b = parts["A"], parts["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise _fail(
                name, path, f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form a low-rank pair"
            )
        adapter.pairs[module] = (a, b)
    if not adapter.pairs:
        raise _fail(name, path, "holds no LoRA weights")
    return adapter


def _recorded_weight(base_dir: Path, tensor_name: str) -> Any:
    """One tensor of a saved model, read alone (safetensors, single file or sharded); None when
    it cannot be found."""
    from safetensors import safe_open

    index = base_dir / "model.safetensors.index.json"
    file = base_dir / "model.safetensors"
    if index.exists():
        try:
            shard = json.loads(index.read_text())["weight_map"].get(tensor_name)
        except (OSError, ValueError, KeyError):
            return None
        file = base_dir / shard if shard else None
    if file is None or not file.exists():
        return None
    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(tensor_name) if tensor_name in handle.keys() else None


def check_recorded_base(model: Any, adapters: dict[str, str | Path], base_dir: Path) -> None:
    """Same shapes do not make the same base (another fine-tune of it, a merged model): when an
    adapter's recorded base is a folder other than the served one, one adapted weight must equal
    the served model's. Call before quantizing. Hub names and moved folders are not checked."""
    import torch

    modules = dict(model.named_modules())
    for name, path in adapters.items():
        adapter = read_adapter(name, Path(path), 0)
        recorded = Path(adapter.recorded_base).expanduser() if adapter.recorded_base else None
        if recorded is None or not recorded.is_dir() or recorded.resolve() == Path(base_dir).resolve():
            continue
        module_name = sorted(adapter.pairs)[0]
        module = modules.get(module_name)
        weight = getattr(module, "weight", None)
        saved = _recorded_weight(recorded, module_name + ".weight")
        if weight is None or saved is None or not weight.dtype.is_floating_point:  # (bitsandbytes: int8 already)
            continue
        if saved.shape != weight.shape:
            continue  # LoraRouter refuses it, naming the sizes
        if not torch.allclose(saved.to(weight.dtype).to(weight.device), weight, atol=1e-6, rtol=1e-3):
            raise _fail(
                name,
                adapter.path,
                f"was trained on {recorded}, whose {module_name} differs from the served "
                f"model's ({base_dir}): serve it on the base it was trained on",
            )


def _linear_sizes(module: Any) -> tuple[int, int] | None:
    """(in, out) of a Linear layer, plain or quantized (torchao keeps nn.Linear; PyTorch's
    dynamic quantization and bitsandbytes swap in their own classes with the same attributes)."""
    sizes = getattr(module, "in_features", None), getattr(module, "out_features", None)
    return (int(sizes[0]), int(sizes[1])) if None not in sizes else None


class LoraRouter:
    """Adapters hooked into a model's Linear layers, and which tokens each one applies to."""

    def __init__(self, model: Any, adapters: dict[str, str | Path], base_dir: Path):
        import torch

        self.adapters: dict[str, LoraAdapter] = {}
        self._routes: list[tuple[Any, Any]] = []  # (flat token indices, adapter) for this forward
        self._hooks = []
        modules = dict(model.named_modules())
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        if not dtype.is_floating_point:
            dtype = torch.float32
        per_module: dict[str, list[tuple[LoraAdapter, Any, Any]]] = {}
        for index, (name, path) in enumerate(adapters.items(), start=1):
            adapter = read_adapter(name, Path(path), index)
            for module_name, (a, b) in adapter.pairs.items():
                module = modules.get(module_name)
                if module is None:
                    raise _fail(
                        name,
                        adapter.path,
                        f"adapts {module_name}, which the base model in {base_dir} does "
                        f"not have: it was trained on another base",
                    )
                sizes = _linear_sizes(module)
                if sizes is None:
                    raise _fail(
                        name,
                        adapter.path,
                        f"adapts {module_name}, which is a {type(module).__name__} in {base_dir}, not a Linear layer",
                    )
                if (a.shape[1], b.shape[0]) != sizes:
                    raise _fail(
                        name,
                        adapter.path,
                        f"{module_name} is {sizes[0]}→{sizes[1]} in the base model "
                        f"({base_dir}) but {a.shape[1]}→{b.shape[0]} in the adapter: "
                        f"it was trained on another base",
                    )
                pair = (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
                adapter.pairs[module_name] = pair
                per_module.setdefault(module_name, []).append((adapter, *pair))
            self.adapters[name] = adapter
        for module_name, entries in per_module.items():
            self._hooks.append(modules[module_name].register_forward_hook(self._hook(entries)))

    def index(self, name: str | None) -> int:
        """The routing index of an adapter name (0: the base model)."""
        if not name:
            return 0
        adapter = self.adapters.get(name)
        if adapter is None:
            raise EngineError(f"no LoRA adapter named '{name}' is loaded")
        return adapter.index

    def route(self, token_adapters: Any) -> None:
        """Before a forward: `token_adapters` is a long tensor shaped like its input_ids, each
        token's adapter index (0 = base); None runs the base for every token."""
        self._routes = []
        if token_adapters is None:
            return
        flat = token_adapters.reshape(-1)
        for adapter in self.adapters.values():
            rows = (flat == adapter.index).nonzero().squeeze(1)
            if rows.numel():
                self._routes.append((rows, adapter))

    @property
    def routed(self) -> bool:
        """Whether the last `route` sent any token through an adapter (the fast forward then steps aside)."""
        return bool(self._routes)

    def _hook(self, entries: list[tuple[LoraAdapter, Any, Any]]):
        by_adapter = {adapter.index: (adapter.scale, a, b) for adapter, a, b in entries}

        def add_delta(_module: Any, inputs: tuple[Any, ...], output: Any) -> Any:
            if not self._routes:
                return output
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            y = output.reshape(-1, output.shape[-1])
            for rows, adapter in self._routes:
                found = by_adapter.get(adapter.index)
                if found is None:
                    continue
                scale, a, b = found
                picked = x.index_select(0, rows).to(a.dtype)
                delta = (picked @ a.t()) @ b.t()
                y.index_add_(0, rows, (delta * scale).to(y.dtype))
            return y.view(output.shape)

        return add_delta

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
