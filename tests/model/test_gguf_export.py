"""`model export --format gguf`: read back with llama.cpp's own gguf reader, and run by llama.cpp
itself (llama-cpp-python) where it is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def test_gguf_export_reads_back_with_weights_tokenizer_and_template(cli, tmp_path, tiny_model_dir):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny.gguf"
    entry = cli("model", "export", tiny_model_dir, "-o", out, "--outtype", "f32", "--json").json()
    assert entry["kind"] == "gguf" and entry["metrics"]["pre_tokenizer"] == "starcoder"
    reader = gguf.GGUFReader(str(out))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = model.config
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == config.num_hidden_layers
    assert _field(reader, "llama.attention.head_count_kv") == config.num_key_value_heads
    assert _field(reader, "llama.context_length") == config.max_position_embeddings
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = tok.get_vocab()
    assert len(tokens) == config.vocab_size
    assert all(tokens[i] == t for t, i in vocab.items())
    types = _field(reader, "tokenizer.ggml.token_type")
    eot = vocab["<|end_of_turn|>"]
    assert types[eot] == gguf.TokenType.CONTROL and types[vocab["Ġthe"] if "Ġthe" in vocab else 300] == 1
    assert _field(reader, "tokenizer.ggml.eot_token_id") == eot
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert _field(reader, "tokenizer.chat_template") == tok.chat_template
    merges = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(merges)

    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied head: llama.cpp reuses token_embd
    state = model.state_dict()
    np.testing.assert_array_equal(
        np.asarray(tensors["token_embd.weight"].data), state["model.embed_tokens.weight"].numpy()
    )
    np.testing.assert_array_equal(
        np.asarray(tensors["blk.1.ffn_down.weight"].data), state["model.layers.1.mlp.down_proj.weight"].numpy()
    )
    # Q rows are permuted per head into GGML's rotary layout: same rows, another order
    q_hf = state["model.layers.0.self_attn.q_proj.weight"].numpy()
    q_gguf = np.asarray(tensors["blk.0.attn_q.weight"].data)
    assert not np.array_equal(q_hf, q_gguf)
    head_dim = config.hidden_size // config.num_attention_heads
    first_head = q_hf[:head_dim]
    np.testing.assert_array_equal(q_gguf[0], first_head[0])
    np.testing.assert_array_equal(q_gguf[1], first_head[head_dim // 2])


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_gguf_smaller_types(cli, tmp_path, tiny_model_dir, outtype):
    import gguf

    f32 = tmp_path / "f32.gguf"
    cli("model", "export", tiny_model_dir, "-o", f32, "--outtype", "f32")
    small = tmp_path / f"{outtype}.gguf"
    cli("model", "export", tiny_model_dir, "-o", small, "--outtype", outtype)
    assert small.stat().st_size < f32.stat().st_size
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(str(small)).tensors}
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay f32
    expected = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[outtype]
    assert kinds["blk.0.ffn_up.weight"] == expected


def test_gguf_export_refusals(cli, tmp_path, tiny_model_dir):
    out = tmp_path / "x.gguf"
    res = cli("model", "export", tiny_model_dir, "-o", out, "--outtype", "q4_k", expect=None)
    assert res.exit_code != 0 and "unknown --outtype 'q4_k'" in res.output
    dyn = tmp_path / "dyn"
    cli("model", "extend-context", tiny_model_dir, dyn, "--max-len", "8192", "--rope-scaling", "dynamic")
    res = cli("model", "export", dyn, "-o", out, expect=None)
    assert res.exit_code != 0 and "'dynamic' RoPE scaling, which llama.cpp does not implement" in res.output
    # a tokenizer llama.cpp cannot reproduce is refused, not guessed
    odd = tmp_path / "odd"
    import shutil

    shutil.copytree(tiny_model_dir, odd)
    tj = json.loads((odd / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (odd / "tokenizer.json").write_text(json.dumps(tj))
    res = cli("model", "export", odd, "-o", out, expect=None)
    assert res.exit_code != 0 and "not one llama.cpp knows" in res.output
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))


def test_llama_cpp_generates_the_same_greedy_tokens(cli, tmp_path, tiny_model_dir):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds from source)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny.gguf"
    cli("model", "export", tiny_model_dir, "-o", out, "--outtype", "f32")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=512, n_threads=1, verbose=False, logits_all=True)
    text = "GPT4 Correct User: the cat sat on 1234 mats, and then?<|end_of_turn|>GPT4 Correct Assistant:"
    ours = tok(text, add_special_tokens=False).input_ids
    # llama.cpp's own tokenizer (pre-tokenizer chosen by name) splits the text the same way
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours
    # logits of the whole prompt agree
    llm.eval(ours)
    theirs = np.asarray(llm.scores[: len(ours)])
    with torch.no_grad():
        reference = model(torch.tensor([ours])).logits[0].numpy()
    np.testing.assert_allclose(theirs, reference, atol=2e-3)
    # and greedy decoding picks the same tokens
    llm.reset()
    generated = []
    for token in llm.generate(ours, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        generated.append(token)
        if len(generated) == 16:
            break
    with torch.no_grad():
        expected = model.generate(torch.tensor([ours]), max_new_tokens=16, do_sample=False, eos_token_id=None)[
            0, len(ours) :
        ].tolist()
    assert generated == expected[: len(generated)] and len(generated) == 16
