"""Tiny local models: a byte-level BPE tokenizer trained in milliseconds and a random Llama.

Nothing is downloaded: tests, benchmarks and the quickstart all start from these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from openchat_cli.templates import all_special_tokens

BASE_SPECIALS = ["<unk>", "<pad>"]


@dataclass(frozen=True)
class ModelSize:
    vocab_size: int
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    max_positions: int


SIZES = {
    "tiny": ModelSize(
        vocab_size=512, hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=176, max_positions=2048
    ),
    "small": ModelSize(
        vocab_size=2048, hidden_size=256, layers=4, heads=8, kv_heads=4, intermediate_size=688, max_positions=4096
    ),
}

# Used when no corpus is given: enough text for a BPE tokenizer to learn useful merges.
BUILTIN_CORPUS = """\
The quick brown fox jumps over the lazy dog. What is 12 plus 7? The answer is 19.
Hello! How can I help you today? Please write a short poem about the sea.
def add(a, b):\n    return a + b\n
In mathematics, a prime number is a natural number greater than 1 that is not a product of two
smaller natural numbers. Water boils at 100 degrees Celsius at sea level.
Question: What is the capital of France? Answer: Paris.
""".splitlines()


def read_corpus(path: Path | None) -> Iterator[str]:
    if path is None:
        yield from BUILTIN_CORPUS
        return
    with open(path, encoding="utf-8", errors="replace") as fh:
        yield from fh


def train_tokenizer(lines: Iterable[str], vocab_size: int, extra_specials: Iterable[str] = ()):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(["<s>", "</s>", *BASE_SPECIALS, *all_special_tokens(), *extra_specials]))
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    # Digits are split one by one (as Llama does) so numbers share parts and arithmetic-like
    # tasks can generalise; everything else follows GPT-2's byte-level pre-tokenization.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 256 + len(specials) + 1),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=[s for s in specials if s not in ("<s>", "</s>", "<unk>", "<pad>")],
        clean_up_tokenization_spaces=False,
    )


def random_llama(tokenizer, size: ModelSize, seed: int = 0):
    """A randomly initialised Llama-architecture causal LM sized for CPU work."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=size.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)
