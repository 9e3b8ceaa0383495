"""Ragged decode attention (engines/ragged_attention.py + .c): the C kernel against torch's sdpa per
row, the torch fallback, and every way of ending up on the fallback (switch, broken compiler,
unsupported dtype or layout)."""

from __future__ import annotations

import logging
import os
import shutil
import threading

import pytest
import torch
import torch.nn.functional as F

from openchat_cli.serve.engines import ragged_attention as ra

# bf16 inputs, fp32 accumulation, one rounding to bf16 at the end: within one bf16 rounding
# (2**-8 relative) of the fp32 result on the same bf16 inputs.
BF16_RTOL, BF16_ATOL = 2**-8, 1e-5
F32_TOL = 1e-5
HAS_COMPILER = any(shutil.which(c) for c in (os.environ.get("CC") or "cc", "cc", "gcc"))


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """The kernel, built once for this module into its own cache folder by two threads at once
    (as two engine processes starting together would), then used by every test."""
    if not HAS_COMPILER:
        pytest.skip("no C compiler here: only the fallback can be tested")
    cache = tmp_path_factory.mktemp("kernels")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ra.ENV_CACHE, str(cache))
        mp.delenv(ra.ENV_SWITCH, raising=False)
        loaders = [ra._Loader(), ra._Loader()]
        threads = [threading.Thread(target=loader.get) for loader in loaders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for loader in loaders:
            assert loader.kernel is not None, loader.reason
        assert [p.name for p in cache.iterdir()] == [loaders[0].kernel.path.name]  # one library, no temp left
        mp.setattr(ra, "_loader", loaders[0])
        yield loaders[0].kernel


@pytest.fixture
def kernel_only(kernel, monkeypatch):
    """Fail if decode_attention quietly took the torch path."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("the torch fallback ran instead of the kernel")

    monkeypatch.setattr(ra, "decode_attention_torch", no_fallback)
    return kernel


def make_rows(lengths, q_heads, kv_heads, head_dim, dtype, room=0, seed=0):
    """Query [B, Hq, D] and per-row key/value views [Hkv, L, D] of buffers with `room` spare
    positions per head (head stride (L + room) * D), as a growing cache holds them."""
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(len(lengths), q_heads, head_dim, generator=g).to(dtype)
    keys = [torch.randn(kv_heads, n + room, head_dim, generator=g).to(dtype)[:, :n] for n in lengths]
    values = [torch.randn(kv_heads, n + room, head_dim, generator=g).to(dtype)[:, :n] for n in lengths]
    return query, keys, values


def reference(query, keys, values, scale):
    """torch's sdpa per row in fp32, kv heads repeated as transformers' repeat_kv does."""
    rows = []
    for i, (k, v) in enumerate(zip(keys, values)):
        groups = query.shape[1] // k.shape[0]
        k, v = k.float().repeat_interleave(groups, dim=0), v.float().repeat_interleave(groups, dim=0)
        rows.append(F.scaled_dot_product_attention(query[i].float().unsqueeze(1), k, v, scale=scale).squeeze(1))
    return torch.stack(rows)


def ragged_lengths(batch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 400, (batch,), generator=g).tolist()
    # 1 (a prompt of one token), and either side of the kernel's 128-key blocks.
    edge = [1, 127, 128, 129, 257]
    return (edge + lengths)[:batch] if batch > 1 else [300]


@pytest.mark.parametrize(
    "batch,q_heads,kv_heads,head_dim",
    [(1, 8, 4, 32), (64, 8, 4, 32), (64, 8, 4, 64), (9, 4, 4, 128), (9, 8, 1, 64), (9, 6, 2, 40), (9, 16, 2, 32)],
)
def test_float32_matches_sdpa(kernel_only, batch, q_heads, kv_heads, head_dim):
    query, keys, values = make_rows(
        ragged_lengths(batch, seed=batch), q_heads, kv_heads, head_dim, torch.float32, room=5
    )
    scale = head_dim**-0.5
    out = ra.decode_attention(query, keys, values, scale)
    assert out.shape == query.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(query, keys, values, scale), rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.parametrize("head_dim,kv_heads", [(32, 4), (64, 2), (128, 8)])
def test_bfloat16_within_one_rounding_of_fp32(kernel_only, head_dim, kv_heads):
    query, keys, values = make_rows(ragged_lengths(17, seed=head_dim), 8, kv_heads, head_dim, torch.bfloat16, room=3)
    scale = head_dim**-0.5
    out = ra.decode_attention(query, keys, values, scale)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(query, keys, values, scale), rtol=BF16_RTOL, atol=BF16_ATOL)


def test_large_scores_stay_finite(kernel_only):
    """Online softmax: scores in the hundreds (exp would overflow without the running max), the
    largest one late in a long row (so earlier blocks are rescaled)."""
    query, keys, values = make_rows([700, 1, 300], 4, 2, 32, torch.float32)
    keys[0][:, 650] = query[0, ::2] * 40.0
    out = ra.decode_attention(query * 3, keys, values, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference(query * 3, keys, values, 1.0), rtol=F32_TOL, atol=F32_TOL)


def test_views_of_one_shared_buffer(kernel_only):
    """Rows that are windows of one preallocated [rows, Hkv, capacity, D] buffer (large head
    stride, rows of different lengths) read only their own positions."""
    buffer_k = torch.randn(3, 2, 50, 32)
    buffer_v = torch.randn(3, 2, 50, 32)
    lengths = [7, 50, 1]
    keys = [buffer_k[i, :, :n] for i, n in enumerate(lengths)]
    values = [buffer_v[i, :, :n] for i, n in enumerate(lengths)]
    query = torch.randn(3, 4, 32)
    out = ra.decode_attention(query, keys, values, 0.2)
    torch.testing.assert_close(out, reference(query, keys, values, 0.2), rtol=F32_TOL, atol=F32_TOL)
    buffer_k[0, :, 7:] = float("nan")  # beyond row 0's length: never read
    torch.testing.assert_close(ra.decode_attention(query, keys, values, 0.2), out)


def test_empty_batch(kernel_only):
    out = ra.decode_attention(torch.empty(0, 8, 32), [], [], 0.1)
    assert out.shape == (0, 8, 32)


def test_threads_give_the_same_result(kernel_only):
    query, keys, values = make_rows(ragged_lengths(24, seed=3), 8, 4, 64, torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ra.decode_attention(query, keys, values, 0.125)
        torch.set_num_threads(2)
        two = ra.decode_attention(query, keys, values, 0.125)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


def test_torch_fallback_matches_sdpa():
    for dtype, tol in ((torch.float32, F32_TOL), (torch.bfloat16, 2**-7)):
        query, keys, values = make_rows(ragged_lengths(9, seed=1), 8, 2, 32, dtype, room=4)
        out = ra.decode_attention_torch(query, keys, values, 0.3)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), reference(query, keys, values, 0.3), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "case,why",
    [
        ("float64", "dtype torch.float64"),
        ("transposed", "rows are not contiguous"),
        ("mixed", "differ from the query in dtype"),
    ],
)
def test_unsupported_input_falls_back_with_one_debug_line(kernel, monkeypatch, caplog, case, why):
    monkeypatch.setattr(ra, "_logged", set())
    lengths = [5, 1, 33]
    if case == "transposed":  # a [L, Hkv, D] cache seen as [Hkv, L, D]: rows Hkv * D apart
        query = torch.randn(3, 4, 16)
        keys = [torch.randn(n, 2, 16).transpose(0, 1) for n in lengths]
        values = [torch.randn(n, 2, 16).transpose(0, 1) for n in lengths]
    else:
        query, keys, values = make_rows(lengths, 4, 2, 16, torch.float64 if case == "float64" else torch.float32)
        if case == "mixed":
            keys[1] = keys[1].to(torch.bfloat16)
            values[1] = values[1].to(torch.bfloat16)
    monkeypatch.setattr(ra, "_run_kernel", lambda *a, **k: pytest.fail("the kernel got input it cannot take"))
    with caplog.at_level(logging.DEBUG, logger=ra.__name__):
        if case == "mixed":  # torch's sdpa refuses it too: an error, never a wrong answer
            with pytest.raises(RuntimeError, match="dtype"):
                ra.decode_attention(query, keys, values, 0.25)
        else:
            out = ra.decode_attention(query, keys, values, 0.25)
            ra.decode_attention(query, keys, values, 0.25)  # logged once, not per call
            torch.testing.assert_close(
                out, reference(query, keys, values, 0.25).to(out.dtype), rtol=F32_TOL, atol=F32_TOL
            )
    lines = [r.getMessage() for r in caplog.records if "torch fallback" in r.getMessage()]
    assert len(lines) == 1 and why in lines[0], lines


def test_switch_forces_the_fallback(kernel, monkeypatch):
    monkeypatch.setenv(ra.ENV_SWITCH, "0")
    monkeypatch.setattr(ra, "_run_kernel", lambda *a, **k: pytest.fail("the kernel ran with the switch off"))
    query, keys, values = make_rows([3, 40], 8, 4, 32, torch.float32)
    out = ra.decode_attention(query, keys, values, 0.5)
    torch.testing.assert_close(out, reference(query, keys, values, 0.5), rtol=F32_TOL, atol=F32_TOL)
    assert ra.kernel_status() == f"torch fallback ({ra.ENV_SWITCH}=0)"


def test_broken_compiler_falls_back_cleanly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CC", "false")  # exits 1 without a word
    monkeypatch.setenv(ra.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(ra.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ra, "_loader", ra._Loader())
    query, keys, values = make_rows([4, 9, 1], 4, 4, 32, torch.float32)
    with caplog.at_level(logging.DEBUG, logger=ra.__name__):
        out = ra.decode_attention(query, keys, values, 0.3)
        ra.decode_attention(query, keys, values, 0.3)  # no second build, no second line
    torch.testing.assert_close(out, reference(query, keys, values, 0.3), rtol=F32_TOL, atol=F32_TOL)
    lines = [r.getMessage() for r in caplog.records if "torch fallback" in r.getMessage()]
    assert len(lines) == 1 and "false could not build ragged_attention.c" in lines[0], lines
    assert ra.kernel_status().startswith("torch fallback (false could not build")
    assert not any((tmp_path / "kernels").iterdir())  # no half-written library or temp file left


def test_missing_compiler_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv(ra.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(ra.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ra, "_loader", ra._Loader())
    query, keys, values = make_rows([2, 6], 4, 2, 32, torch.float32)
    torch.testing.assert_close(
        ra.decode_attention(query, keys, values, 0.3), reference(query, keys, values, 0.3), rtol=F32_TOL, atol=F32_TOL
    )
    assert "no-such-cc" in ra.kernel_status()


def causal_reference(query, key, value, starts, lengths, scale):
    """torch's causal sdpa per segment in fp32 (kv heads repeated) -> [N, Hq, D]."""
    groups = query.shape[0] // key.shape[0]
    out = torch.zeros(query.shape[1], query.shape[0], query.shape[2])
    for s, n in zip(starts, lengths):
        if n:
            k = key[:, s : s + n].float().repeat_interleave(groups, dim=0)
            v = value[:, s : s + n].float().repeat_interleave(groups, dim=0)
            part = F.scaled_dot_product_attention(query[:, s : s + n].float(), k, v, scale=scale, is_causal=True)
            out[s : s + n] = part.transpose(0, 1)
    return out


def packed(lengths, q_heads, kv_heads, head_dim, dtype, seed=0):
    """A packed row laid out as transformers' projections leave it: query/key/value [N, H, D] in
    memory, seen as [H, N, D]."""
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    query = torch.randn(n, q_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    key = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    value = torch.randn(n, kv_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    return query, key, value, starts


@pytest.fixture
def prefill_kernel_only(kernel, monkeypatch):
    """Fail if prefill_attention quietly took the per-segment sdpa path."""
    monkeypatch.setattr(ra, "_prefill_sdpa", lambda *a, **k: pytest.fail("sdpa ran instead of the prefill kernel"))
    return kernel


@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(8, 4, 32), (4, 4, 64), (8, 2, 128), (6, 3, 40)])
def test_prefill_matches_causal_sdpa_per_segment(prefill_kernel_only, monkeypatch, q_heads, kv_heads, head_dim):
    """Segments of 1 token, either side of the kernel's 64-key blocks and 4-query tiles, and a long
    one, packed in one row laid out as transformers leaves it (read in place)."""
    lengths = [1, 5, 63, 64, 65, 300, 2]
    query, key, value, starts = packed(lengths, q_heads, kv_heads, head_dim, torch.float32)
    pointers = []
    prefill = prefill_kernel_only.prefill
    monkeypatch.setattr(prefill_kernel_only, "prefill", lambda *a: pointers.append(a[:3]) or prefill(*a))
    out = ra.prefill_attention(query, key, value, starts, lengths, head_dim**-0.5)
    assert pointers == [(query.data_ptr(), key.data_ptr(), value.data_ptr())]  # no copies
    assert out.shape == (sum(lengths), q_heads, head_dim) and out.is_contiguous()
    expected = causal_reference(query, key, value, starts, lengths, head_dim**-0.5)
    torch.testing.assert_close(out, expected, rtol=F32_TOL, atol=F32_TOL)


def test_prefill_torch_version_matches(kernel):
    lengths = [3, 70, 1]
    query, key, value, starts = packed(lengths, 8, 2, 32, torch.float32, seed=5)
    expected = causal_reference(query, key, value, starts, lengths, 0.2)
    out = ra.prefill_attention_torch(query, key, value, starts, lengths, 0.2)
    torch.testing.assert_close(out, expected, rtol=F32_TOL, atol=F32_TOL)


def test_prefill_bfloat16_gaps_and_contiguous_inputs(prefill_kernel_only):
    """bf16; segments that leave positions uncovered (zeros there); [H, N, D]-contiguous inputs."""
    lengths = [7, 3, 40, 9]
    query, key, value, starts = packed(lengths, 8, 4, 32, torch.bfloat16, seed=2)
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    used_starts, used_lengths = [starts[0], starts[2], starts[3]], [lengths[0], lengths[2], 4]
    out = ra.prefill_attention(query, key, value, used_starts, used_lengths, 0.2)
    assert out.dtype == torch.bfloat16
    expected = causal_reference(query, key, value, used_starts, used_lengths, 0.2)
    torch.testing.assert_close(out.float(), expected, rtol=BF16_RTOL, atol=BF16_ATOL)
    assert not out[7:10].any() and not out[54:].any()


def test_prefill_switch_off_and_bad_segments(kernel, monkeypatch):
    monkeypatch.setenv(ra.ENV_SWITCH, "0")
    monkeypatch.setattr(kernel, "prefill", lambda *a: pytest.fail("the kernel ran with the switch off"))
    query, key, value, starts = packed([4, 6], 4, 2, 32, torch.float32)
    out = ra.prefill_attention(query, key, value, starts, [4, 6], 0.3)
    torch.testing.assert_close(
        out, causal_reference(query, key, value, starts, [4, 6], 0.3), rtol=F32_TOL, atol=F32_TOL
    )
    with pytest.raises(ValueError, match="within the 10 packed positions"):
        ra.prefill_attention(query, key, value, [4], [7], 0.3)


def test_non_contiguous_query_still_takes_the_kernel(kernel_only):
    _, keys, values = make_rows([9, 1, 200], 8, 2, 64, torch.float32)
    query = torch.randn(8, 3, 64).transpose(0, 1)  # [B, Hq, D] seen through a transpose
    out = ra.decode_attention(query, keys, values, 0.125)
    torch.testing.assert_close(out, reference(query, keys, values, 0.125), rtol=F32_TOL, atol=F32_TOL)


@pytest.mark.slow
def test_portable_build_without_openmp_or_march_native(tmp_path, monkeypatch):
    """The last build tried (no OpenMP runtime, no -march=native: e.g. Apple clang) is correct too."""
    if not HAS_COMPILER:
        pytest.skip("no C compiler here")
    portable = ra._flag_sets()[-1]
    assert "-fopenmp" not in portable[0] and "-march=native" not in portable[0]
    monkeypatch.setattr(ra, "_flag_sets", lambda: [portable])
    monkeypatch.setenv(ra.ENV_CACHE, str(tmp_path))
    monkeypatch.delenv(ra.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ra, "_loader", ra._Loader())
    assert ra._loader.get() is not None and not ra._loader.kernel.openmp, ra._loader.reason
    query, keys, values = make_rows([1, 130, 40], 8, 4, 32, torch.float32)
    torch.testing.assert_close(
        ra.decode_attention(query, keys, values, 0.2), reference(query, keys, values, 0.2), rtol=F32_TOL, atol=F32_TOL
    )
    query, key, value, starts = packed([3, 70], 4, 2, 64, torch.float32)
    torch.testing.assert_close(
        ra.prefill_attention(query, key, value, starts, [3, 70], 0.2),
        causal_reference(query, key, value, starts, [3, 70], 0.2),
        rtol=F32_TOL,
        atol=F32_TOL,
    )


CHECK_STATUS = "from openchat_cli.serve.engines import ragged_attention as ra; print(ra.kernel_status())"


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_cached_library_is_rebuilt_not_loaded(kernel, tmp_path, damage):
    """A cached .so cut short (disk full, a killed copy, a sync tool) made dlopen map pages past
    the file's end: the first kernel call killed the whole server with SIGBUS. It must be built
    again instead. Run in a child process: the bug kills the process that loads the file."""
    import subprocess
    import sys

    cache = tmp_path / "kernels"
    cache.mkdir()
    damaged = cache / kernel.path.name
    whole = kernel.path.read_bytes()
    damaged.write_bytes(
        {"truncated": whole[: len(whole) // 3], "empty": b"", "garbage": b"\x7fELF" + b"x" * 200}[damage]
    )
    env = {**os.environ, ra.ENV_CACHE: str(cache), "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(ra.ENV_SWITCH, None)
    done = subprocess.run([sys.executable, "-c", CHECK_STATUS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("C kernel ("), done.stdout
    assert damaged.read_bytes() == whole  # rebuilt in place (same source, compiler, flags: the same library)


def test_a_hanging_compiler_is_given_up_after_one_timeout(tmp_path, monkeypatch):
    """A $CC that never returns (a wrapper waiting on a licence server, a stuck NFS) held the server's
    start for BUILD_TIMEOUT_S once per flag set (3 x 120 s): one timeout is enough to fall back."""
    calls = tmp_path / "calls"
    cc = tmp_path / "slow-cc"
    cc.write_text(f"#!/bin/sh\necho x >> {calls}\nexec sleep 30\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv(ra.ENV_CACHE, str(tmp_path / "kernels"))
    monkeypatch.delenv(ra.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ra, "BUILD_TIMEOUT_S", 3)  # time for a loaded machine to start the script
    monkeypatch.setattr(ra, "_loader", ra._Loader())
    status = ra.kernel_status()
    assert status.startswith("torch fallback (") and "timed out" in status, status
    assert calls.read_text().count("x") == 1


def test_an_unusable_cache_folder_still_gets_the_kernel(kernel, tmp_path, monkeypatch, caplog):
    """$OPENCHAT_KERNEL_CACHE naming a file (or a read-only folder) left the server on the slow torch
    fallback: the kernel is then built in a private temp folder for this process, with a warning."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(ra.ENV_CACHE, str(blocker))
    monkeypatch.delenv(ra.ENV_SWITCH, raising=False)
    monkeypatch.setattr(ra, "_loader", ra._Loader())
    with caplog.at_level(logging.WARNING, logger=ra.__name__):
        assert ra.kernel_status().startswith("C kernel ("), ra._loader.reason
    assert any(str(blocker) in r.getMessage() for r in caplog.records)
    query, keys, values = make_rows([3, 70], 4, 2, 32, torch.float32)
    torch.testing.assert_close(
        ra.decode_attention(query, keys, values, 0.3), reference(query, keys, values, 0.3), rtol=F32_TOL, atol=F32_TOL
    )
