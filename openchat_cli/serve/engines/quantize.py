"""`serve --quantize`: weights in 8 (or 4) bits when memory is short.

CPU: `int8` is PyTorch's `quantize_dynamic` on the Linear layers (int8 weights and activations,
fbgemm's int8 matmuls; in torch itself, so nothing to install); `int8-weight-only` is torchao's
int8 weight-only quantization (the maintained path, closer to float32's greedy output, but an
optional install: transformers and peft import torchao whenever it is present, which adds seconds
to every process start). GPU: bitsandbytes' 8-bit / 4-bit layers, applied
while loading (imported lazily: never installed or run on CPU-only machines).
Embeddings and the LM head stay in full precision in every path (the head decides the argmax).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

from openchat_cli.serve.engines.base import EngineError

QUANTIZE_CHOICES = ("none", "int8", "int8-weight-only", "int4")


def check_quantize(quantize: str | None, device: str) -> str | None:
    """The method name, or None for full precision; refused where it cannot run."""
    if quantize in (None, "", "none"):
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise EngineError(f"unknown --quantize '{quantize}' (choose {', '.join(QUANTIZE_CHOICES)})")
    if quantize == "int4" and not device.startswith("cuda"):
        raise EngineError("--quantize int4 needs a CUDA GPU (bitsandbytes 4-bit); on CPU use --quantize int8")
    if quantize == "int8-weight-only" and importlib.util.find_spec("torchao") is None:
        raise EngineError(
            "--quantize int8-weight-only needs torchao: pip install 'openchat-cli[torchao]' "
            "(or use --quantize int8, PyTorch's own dynamic int8)"
        )
    return quantize


def load_kwargs(quantize: str | None, device: str) -> dict[str, Any]:
    """Extra `from_pretrained` arguments: bitsandbytes quantizes while loading, on the GPU."""
    if quantize is None or quantize == "int8-weight-only" or not device.startswith("cuda"):
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise EngineError(f"--quantize {quantize} on a GPU needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if quantize.startswith("int8"):
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        import torch

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": device}}


def quantize_loaded(model: Any, quantize: str | None, device: str) -> str | None:
    """Quantize a model already loaded on the CPU; returns the method used (for /health)."""
    if quantize is None:
        return None
    import torch

    head = model.get_output_embeddings()
    if quantize == "int8-weight-only":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(
            model,
            Int8WeightOnlyConfig(),
            filter_fn=lambda module, _name: isinstance(module, torch.nn.Linear) and module is not head,
        )
        return "torchao-int8-weight-only"
    if device.startswith("cuda"):
        return f"bitsandbytes-{quantize}"
    if model.dtype != torch.float32:
        raise EngineError(
            f"--quantize {quantize} on CPU quantizes float32 weights: drop --dtype or use --dtype float32"
        )
    from torch.ao.quantization import quantize_dynamic

    names = {
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and module is not head
    }
    with warnings.catch_warnings():  # deprecated in favour of torchao (see the module docstring)
        warnings.simplefilter("ignore")
        quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
    return "torch-dynamic-int8"


def weight_bytes(model: Any) -> int:
    """Bytes the model's weights take (quantized tensors counted at their packed size)."""
    total = 0
    seen = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += _tensor_bytes(tensor)
    for module in model.modules():  # PyTorch's dynamic-quantized Linear keeps its weight packed
        packed = getattr(module, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size()
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


def _tensor_bytes(tensor: Any) -> int:
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None:  # a torchao tensor subclass: its int8 data and scales
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()
