"""Write a Llama-architecture checkpoint as one GGUF file, the format llama.cpp and Ollama load.

The file format and tensor names come from the `gguf` package that llama.cpp publishes
(`GGUFWriter`, `TensorNameMap`); what this module adds is the knowledge of how a Hugging Face
Llama maps onto it:

- Q and K projections are stored for GGML's rotary layout (pairs of adjacent dimensions), while
  Hugging Face rotates the two halves of each head: their rows are permuted per head.
- A tied LM head is not written (llama.cpp falls back to the token embeddings).
- The tokenizer goes in whole: the byte-level BPE vocabulary and merges, each token's type
  (normal / control / user-defined / unused padding rows), the special ids, the template's
  end-of-turn token as EOT (llama.cpp stops there), and the Jinja chat template.
- llama.cpp re-implements pre-tokenization by name (`tokenizer.ggml.pre`); the name is chosen by
  recognising the tokenizer's pre-tokenizer, and an unknown one is refused rather than guessed,
  since a wrong guess tokenizes differently without any error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.errors import OpenchatError

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

# Pre-tokenizer regexes as tokenizers' `Split` patterns, by llama.cpp's pre-tokenizer name.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass
class ExportSummary:
    path: Path
    tensors: int
    vocab_size: int
    out_type: str
    pre_tokenizer: str
    bytes: int


def _pre_tokenizer_name(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenization (see the module docstring)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "starcoder"  # each digit alone, then GPT-2's pattern
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        regex = (parts[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3_REGEX:
            return "llama-bpe"
        if regex == _QWEN2_REGEX:
            return "qwen2"
    raise OpenchatError(
        f"the tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp knows by "
        "name (gpt-2, starcoder, llama-bpe, qwen2): exporting it would tokenize differently"
    )


def _merges(tokenizer_json: dict[str, Any]) -> list[str]:
    merges = (tokenizer_json.get("model") or {}).get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def hf_to_ggml_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder a Q/K projection's rows from Hugging Face's rotate-half layout (each head: first
    half, second half) to GGML's adjacent pairs (each head: d0, d_half, d1, d_half+1, …)."""
    rows = weight.shape[0]
    head_dim = rows // heads
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL if added[text].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def _encode_tensor(data: np.ndarray, out_type: str) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None) for one tensor; 1-D tensors stay fp32."""
    import gguf

    if data.ndim <= 1 or out_type == "f32":
        return data.astype(np.float32), None
    if out_type == "f16":
        return data.astype(np.float16), None
    kind = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[out_type]
    if out_type == "q8_0" and data.shape[-1] % 32:
        return data.astype(np.float16), None  # Q8_0 needs rows in blocks of 32
    return gguf.quants.quantize(data.astype(np.float32), kind), kind


def export_gguf(
    model_dir: Path,
    dest: Path,
    *,
    out_type: str = "f16",
    name: str | None = None,
    eot_token: str | None = None,
    context: int | None = None,
    on_tensor: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write `model_dir` (a Llama-architecture HF checkpoint) to the GGUF file `dest` (in place:
    the caller hands a temporary path and renames it)."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if out_type not in OUT_TYPES:
        raise OpenchatError(f"unknown --outtype '{out_type}': choose one of {', '.join(OUT_TYPES)}")
    config = AutoConfig.from_pretrained(str(model_dir))
    architecture = (config.architectures or [""])[0]
    if architecture not in LLAMA_ARCHITECTURES:
        raise OpenchatError(
            f"{model_dir} is a {architecture or config.model_type} model; GGUF export handles "
            f"Llama-architecture checkpoints ({', '.join(LLAMA_ARCHITECTURES)})"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise OpenchatError(f"{model_dir}: attention/MLP biases are not part of llama.cpp's Llama layout")
    tokenizer_file = Path(model_dir) / "tokenizer.json"
    if not tokenizer_file.exists():
        raise OpenchatError(f"{model_dir} has no tokenizer.json (a fast byte-level BPE tokenizer is needed)")
    tokenizer_json = json.loads(tokenizer_file.read_text())
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise OpenchatError(f"{tokenizer_file}: only BPE tokenizers are exported")
    pre = _pre_tokenizer_name(tokenizer_json)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "linear", "yarn"):
        raise OpenchatError(
            f"{model_dir} uses '{rope_type}' RoPE scaling, which llama.cpp does not implement "
            "(export the base model, or extend its context with linear or yarn scaling)"
        )

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    blocks = config.num_hidden_layers
    vocab_size = int(model.get_input_embeddings().weight.shape[0])

    writer = gguf.GGUFWriter(str(dest), "llama")
    writer.add_name(name or Path(model_dir).name)
    writer.add_context_length(int(context or config.max_position_embeddings))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(vocab_size)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[out_type]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, types = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer_json))
    for setter, token_id in (
        (writer.add_bos_token_id, tokenizer.bos_token_id),
        (writer.add_eos_token_id, tokenizer.eos_token_id),
        (writer.add_unk_token_id, tokenizer.unk_token_id),
        (writer.add_pad_token_id, tokenizer.pad_token_id),
    ):
        if token_id is not None:
            setter(int(token_id))
    if eot_token and eot_token in tokenizer.get_vocab():
        writer.add_eot_token_id(int(tokenizer.convert_tokens_to_ids(eot_token)))
    bos_first = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(bool(bos_first))
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise OpenchatError(f"{model_dir}: no GGUF name for tensor '{hf_name}'")
        data = tensor.detach().cpu().numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = hf_to_ggml_rope_rows(data, heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = hf_to_ggml_rope_rows(data, kv_heads)
        array, raw = _encode_tensor(data, out_type)
        writer.add_tensor(gguf_name, array, raw_dtype=raw)
        count += 1
        if on_tensor:
            on_tensor(gguf_name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return ExportSummary(Path(dest), count, vocab_size, out_type, pre, Path(dest).stat().st_size)
