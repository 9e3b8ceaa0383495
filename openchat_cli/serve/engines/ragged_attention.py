"""Decode attention over a ragged KV cache: each sequence's one new query token against its own
keys and values, whatever their lengths, with no padding.

Why: the padded, masked sdpa over the batch's cache spends most of its time on padding columns
(~72% of them on a ShareGPT-like batch), and a Python loop of one sdpa per sequence pays torch's
per-call overhead once per row and layer. A small C kernel (ragged_attention.c, beside this file)
reads each key/value row once for all the query heads sharing it and keeps an online softmax in
fp32. It is compiled at first use with the system C compiler into the user's cache, keyed by a
hash of the source, compiler, flags and CPU, and loaded with ctypes. Without a compiler, after a
failed build, for a dtype or layout it does not take, or with OPENCHAT_ATTENTION_KERNEL=0, the
same function runs a pure-torch loop instead (one debug log line says why).

`prefill_attention` is the same for a packed row of prompts: causal attention within each prompt,
tiled in C, with per-prompt sdpa as its fallback.
"""

from __future__ import annotations

import array
import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import struct
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from openchat_cli.serve.engines.switches import env_switch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".c")
ENV_SWITCH = "OPENCHAT_ATTENTION_KERNEL"  # "0" (or off/false/no) forces the torch fallback
ENV_CACHE = "OPENCHAT_KERNEL_CACHE"  # where compiled kernels go (default: the user's cache dir)
# -ffast-math is left out on purpose: linking a shared library with it turns on flush-to-zero
# for the whole process (GCC < 13). These allow the vectorized reductions it would allow.
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros", "-fassociative-math"]
BUILD_TIMEOUT_S = 120
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


def _compiler() -> list[str] | None:
    """The C compiler command: $CC, else the one Python was built with, else `cc` / `gcc`."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if not candidate:
            continue
        argv = shlex.split(candidate)
        if argv and shutil.which(argv[0]):
            return argv
        if candidate == os.environ.get("CC"):
            return argv or None  # an explicit $CC is used as given, even when it cannot run
    return None


def _cpu_flags() -> str:
    """What -march=native depends on: the CPU model and feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def cache_dir() -> Path:
    """Folder of compiled kernels: $OPENCHAT_KERNEL_CACHE, else <user cache>/openchat/kernels."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    import platformdirs

    return Path(platformdirs.user_cache_dir("openchat")) / "kernels"


class _Kernel:
    """The compiled library's entry point, with ctypes argument types set once (a call costs ~1 µs)."""

    def __init__(self, path: Path, openmp: bool) -> None:
        self.path = path
        self.openmp = openmp
        self._lib = ctypes.CDLL(str(path))
        ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        # query, rows table, B, Hq, Hkv, D, scale, dtype, threads, out
        self.decode = self._lib.ragged_decode_attention
        self.decode.argtypes = [ptr, ptr, i64, i64, i64, i64, f32, i32, i32, ptr]
        self.decode.restype = i32
        # query, key, value, key head/row strides, value head/row strides, segments, S, Hq, Hkv, D,
        # scale, dtype, threads, out
        self.prefill = self._lib.ragged_prefill_attention
        self.prefill.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, ptr, i64, i64, i64, i64, f32, i32, i32, ptr]
        self.prefill.restype = i32
        # q/k, value, their row strides, rope table, positions, rows table, B, Hq, Hkv, D, scale, dtype,
        # threads, query scratch, out
        self.rope_decode = self._lib.ragged_rope_append_decode_attention
        self.rope_decode.argtypes = [ptr, ptr, i64, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, f32, i32, i32]
        self.rope_decode.argtypes += [ptr, ptr]
        self.rope_decode.restype = i32


def _flag_sets() -> list[tuple[list[str], bool]]:
    """Builds to try, best first: with OpenMP, without (no libgomp / libomp), without -march=native
    (compilers that do not know it)."""
    portable = [f for f in FLAGS if f != "-march=native"]
    return [(FLAGS + ["-fopenmp"], True), (FLAGS, False), (portable, False)]


def _build(compiler: list[str]) -> _Kernel:
    """Load the kernel from the cache, or compile it there (or, when the cache folder is unusable, in
    a temp folder); raises RuntimeError saying why not."""
    source = SOURCE.read_bytes()
    exe = shutil.which(compiler[0]) or compiler[0]
    try:
        stamp = f"{os.stat(exe).st_mtime_ns}"
    except OSError:
        stamp = "?"
    builds = []
    for flags, openmp in _flag_sets():
        parts = [source, " ".join(compiler + flags).encode(), exe.encode(), stamp.encode(), _cpu_flags().encode()]
        key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]
        builds.append((cache_dir() / f"ragged_attention-{key}.so", flags, openmp))
    for target, _flags, openmp in builds:  # built before (by this or another process)
        if target.exists():
            kernel = _load_cached(target, openmp)
            if kernel is not None:
                return kernel
    try:
        return _compile(compiler, builds)
    except OSError as exc:  # the cache folder cannot be made or written: build for this process alone
        log.warning(
            "ragged attention: kernel cache %s is unusable (%s): building in a temp folder for this process "
            "(set $%s to a writable folder to keep the build)",
            cache_dir(),
            exc,
            ENV_CACHE,
        )
        with tempfile.TemporaryDirectory(prefix="openchat-kernel-") as private:
            # The library stays mapped after its folder is removed (dlopen has it open).
            return _compile(compiler, [(Path(private) / t.name, flags, openmp) for t, flags, openmp in builds])


def _compile(compiler: list[str], builds: list[tuple[Path, list[str], bool]]) -> _Kernel:
    """Compile the first build that works into its target; RuntimeError says why none did. An
    OSError escapes only when a target's folder cannot hold the build (see `_build`)."""
    from openchat_cli.atomic import remove_stale_temps, temp_file_beside

    last_error = ""
    for target, flags, openmp in builds:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        fd, tmp = temp_file_beside(target)
        os.close(fd)
        try:
            done = subprocess.run(
                [*compiler, *flags, "-shared", "-fPIC", "-o", tmp, str(SOURCE)],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
            )
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: two processes building at once both end with a whole file
                return _Kernel(target, openmp)
            last_error = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[-1]
        except subprocess.TimeoutExpired:
            # A compiler that hangs would hang again with the next flags: one wait is enough.
            last_error = f"timed out after {BUILD_TIMEOUT_S} s"
            break
        except (OSError, subprocess.SubprocessError) as exc:
            last_error = str(exc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{' '.join(compiler)} could not build {SOURCE.name}: {last_error}")


def _load_cached(path: Path, openmp: bool) -> _Kernel | None:
    """A cached library, or None (after deleting it) when it is damaged. Why check before dlopen: a
    library cut short (disk full, a killed copy) is mapped past its end, and the first call into
    it kills the process with SIGBUS; dlopen itself does not notice."""
    if _whole_elf(path):
        try:
            return _Kernel(path, openmp)
        except (OSError, AttributeError) as exc:  # not a library, or not ours (a symbol missing)
            reason = str(exc)
    else:
        reason = "cut short"
    log.warning("ragged attention: cached kernel %s is damaged (%s): building it again", path, reason)
    path.unlink(missing_ok=True)
    return None


def _whole_elf(path: Path) -> bool:
    """Whether every part an ELF loader maps (program headers, PT_LOAD segments) and the section
    headers lie within the file. Files that are not ELF (Mach-O) are left to dlopen to judge."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if len(data) < 4:
        return False
    if data[:4] != b"\x7fELF":
        return True
    if len(data) < 64 or data[4] not in (1, 2) or data[5] not in (1, 2):
        return False
    wide, order = data[4] == 2, "<" if data[5] == 1 else ">"
    header = struct.unpack_from(order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"), data, 16)
    phoff, shoff, phentsize, phnum, shentsize, shnum = header[4], header[5], *header[8:12]
    size = len(data)
    if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
        return False
    for i in range(phnum):
        at = phoff + i * phentsize
        if wide:
            p_type, _flags, offset, _vaddr, _paddr, filesz = struct.unpack_from(order + "IIQQQQ", data, at)
        else:
            p_type, offset, _vaddr, _paddr, filesz = struct.unpack_from(order + "IIIII", data, at)
        if p_type == 1 and offset + filesz > size:  # PT_LOAD
            return False
    return True


class _Loader:
    """Builds the kernel once per process, on first use; remembers why it could not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = False
        self.kernel: _Kernel | None = None
        self.reason = ""

    def get(self) -> _Kernel | None:
        if self._done:
            return self.kernel
        with self._lock:
            if not self._done:
                compiler = _compiler()
                if compiler is None:
                    self.reason = "no C compiler found ($CC, cc, gcc)"
                else:
                    try:
                        self.kernel = _build(compiler)
                    except (OSError, RuntimeError, AttributeError) as exc:
                        self.reason = str(exc)
                if self.kernel is None:
                    log.debug("ragged attention: torch fallback (%s)", self.reason)
                self._done = True
        return self.kernel


_loader = _Loader()
_logged: set[str] = set()


def _switched_off() -> bool:
    return not env_switch(ENV_SWITCH, True)


def _fallback_because(reason: str) -> None:
    if reason not in _logged:
        _logged.add(reason)
        log.debug("ragged attention: torch fallback (%s)", reason)


def kernel_status() -> str:
    """One line for logs and benchmarks: which implementation decode_attention uses, and why."""
    if _switched_off():
        return f"torch fallback ({ENV_SWITCH}={os.environ[ENV_SWITCH]})"
    kernel = _loader.get()
    if kernel is None:
        return f"torch fallback ({_loader.reason})"
    return f"C kernel ({kernel.path}{', OpenMP' if kernel.openmp else ''})"


def decode_attention(
    query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float
) -> torch.Tensor:
    """Attention of one query token per sequence over that sequence's own cache.

    query [B, Hq, D] (copied if not contiguous); keys[i], values[i] [Hkv, L_i, D] with each head's rows contiguous
    (stride(-1) == 1, stride(-2) == D; the head stride may be larger). Query head h uses kv head
    h // (Hq // Hkv). Returns [B, Hq, D] in the query's dtype (fp32 accumulation)."""
    if not _switched_off():
        if query.is_cpu and not query.is_contiguous():
            query = query.contiguous()  # B x Hq x D: a copy costs less than the fallback
        table = _row_table(query, keys, values)
        if isinstance(table, str):
            _fallback_because(table)
        else:
            kernel = _loader.get()
            if kernel is not None:
                return _run_kernel(kernel, query, keys[0].shape[0] if keys else 1, table, scale)
    return decode_attention_torch(query, keys, values, scale)


def _row_table(query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> array.array | str:
    """The kernel's per-row arguments (key pointers, value pointers, lengths, key head strides,
    value head strides: B int64 each, one after the other), or why the kernel cannot take these
    tensors. One pass over the rows reading only cheap attributes: this runs every layer of every
    decode step (~0.6 µs a row)."""
    dtype = query.dtype
    if dtype not in _DTYPE_CODES:
        return f"dtype {dtype}"
    if not query.is_cpu or query.dim() != 3 or not query.is_contiguous():
        return "query is not a contiguous CPU tensor [B, Hq, D]"
    B, Hq, D = query.shape
    if len(keys) != B or len(values) != B:
        return "one key and one value tensor per query row are needed"
    if B == 0:
        return array.array("q")
    shape = keys[0].shape
    if len(shape) != 3 or shape[0] == 0 or Hq % shape[0]:
        return f"{Hq} query heads cannot share kv heads of shape {tuple(shape)}"
    hkv, row = shape[0], (D, 1)
    key_ptrs, value_ptrs, lengths, key_strides, value_strides = [], [], [], [], []
    for k, v in zip(keys, values):
        ks, vs, shape = k.stride(), v.stride(), k.shape
        if k.dtype is not dtype or v.dtype is not dtype or not (k.is_cpu and v.is_cpu):
            return "keys/values differ from the query in dtype or device"
        if ks[1:] != row or vs[1:] != row or len(ks) != 3 or len(vs) != 3:
            return "key/value rows are not contiguous (stride(-1) == 1 and stride(-2) == D needed)"
        if shape != v.shape or shape[0] != hkv or shape[2] != D:
            return "key/value shapes are not all [Hkv, L, D]"
        key_ptrs.append(k.data_ptr())
        value_ptrs.append(v.data_ptr())
        lengths.append(shape[1])
        key_strides.append(ks[0])
        value_strides.append(vs[0])
    return array.array("q", key_ptrs + value_ptrs + lengths + key_strides + value_strides)


def _run_kernel(kernel: _Kernel, query: torch.Tensor, kv_heads: int, table: array.array, scale: float) -> torch.Tensor:
    """One kernel call: query [B, Hq, D] contiguous, `table` the rows' 5 x B int64 arguments."""
    B, Hq, D = query.shape
    out = torch.empty_like(query)
    if B == 0:
        return out
    status = kernel.decode(
        query.data_ptr(),
        table.buffer_info()[0],
        B,
        Hq,
        kv_heads,
        D,
        scale,
        _DTYPE_CODES[query.dtype],
        torch.get_num_threads(),
        out.data_ptr(),
    )
    if status != 0:
        raise ValueError(f"ragged attention kernel rejected B={B} Hq={Hq} Hkv={kv_heads} D={D}")
    return out


def fast_decode_kernel(dtype: torch.dtype) -> _Kernel | None:
    """The kernel `rope_append_decode_attention` needs, or None (switched off, not built, or a dtype it
    does not take): the caller then writes the cache and calls `decode_attention` instead."""
    if _switched_off() or dtype not in _DTYPE_CODES:
        return None
    return _loader.get()


def rope_append_decode_attention(
    kernel: _Kernel,
    qk: torch.Tensor,
    value: torch.Tensor,
    rope: torch.Tensor,
    positions: torch.Tensor,
    table: array.array,
    scale: float,
) -> torch.Tensor:
    """One decode step's attention for one layer, in one kernel call: the rotary embedding of the
    step's queries and keys, each row's new key/value column written into its buffers, then the
    ragged decode attention over them.

    qk [B, Hq + Hkv, D]: the step's un-rotated queries then keys; value [B, Hkv, D] (each head's D
    contiguous, heads D apart, rows may be further apart: slices of a fused projection); rope
    [P, 2, D] contiguous, same dtype: cos, then sin with rotate_half's sign folded into its first
    half; positions [B] int64 contiguous; `table` the decode kernel's 5 x B int64 rows (key and
    value buffer pointers, lengths counting the new column, head strides), buffers with room for
    that column. Returns [B, Hq, D]."""
    B, heads, D = qk.shape
    Hkv = value.shape[1]
    Hq = heads - Hkv
    if (
        qk.stride()[1:] != (D, 1)
        or value.stride()[1:] != (D, 1)
        or not rope.is_contiguous()
        or rope.dtype != qk.dtype
        or value.dtype != qk.dtype
        or positions.dtype != torch.int64
        or not positions.is_contiguous()
    ):
        raise ValueError("rope_append_decode_attention: tensors not in the layout it reads")
    scratch = qk.new_empty((B, Hq, D))
    out = torch.empty_like(scratch)
    status = kernel.rope_decode(
        qk.data_ptr(),
        value.data_ptr(),
        qk.stride(0),
        value.stride(0),
        rope.data_ptr(),
        rope.shape[0],
        positions.data_ptr(),
        table.buffer_info()[0],
        B,
        Hq,
        Hkv,
        D,
        scale,
        _DTYPE_CODES[qk.dtype],
        torch.get_num_threads(),
        scratch.data_ptr(),
        out.data_ptr(),
    )
    if status != 0:
        raise ValueError(
            f"ragged rope/attention kernel rejected B={B} Hq={Hq} Hkv={Hkv} D={D} (or a position past the table)"
        )
    return out


def decode_attention_torch(
    query: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor], scale: float
) -> torch.Tensor:
    """The pure-torch version: one sdpa per sequence over its exact-length cache."""
    out = torch.empty_like(query)
    for i, (k, v) in enumerate(zip(keys, values)):
        q = query[i].unsqueeze(1)  # [Hq, 1, D]
        out[i] = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=k.shape[0] != q.shape[0]).squeeze(1)
    return out


def prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_starts: list[int],
    seq_lengths: list[int],
    scale: float,
) -> torch.Tensor:
    """Causal attention within each segment of one packed row of prompts.

    query [Hq, N, D], key/value [Hkv, N, D]; segment i is positions seq_starts[i] ..
    seq_starts[i] + seq_lengths[i] - 1, and its tokens attend to earlier tokens of their own
    segment only. Returns [N, Hq, D] contiguous (the layout transformers' attention functions hand
    back, less the batch dim); positions outside every segment are zero.

    The kernel tiles each segment (4 query positions x 64 keys, keys transposed once per segment),
    3-5x faster than torch's sdpa(is_causal=True) per segment on one CPU thread
    (benchmarks/bench_attention.py --prefill). The query is read in place when it is an [N, Hq, D]
    tensor seen as [Hq, N, D] (as transformers' projections leave it), keys and values in any
    layout whose last dim is contiguous; others are copied once. Without the kernel: sdpa per
    segment."""
    Hq, N, D = query.shape
    if key.dim() != 3 or key.shape != value.shape or key.shape[1:] != (N, D) or Hq % key.shape[0]:
        raise ValueError(f"query {tuple(query.shape)} and key/value {tuple(key.shape)}/{tuple(value.shape)} do not fit")
    if len(seq_starts) != len(seq_lengths) or any(s < 0 or n < 0 or s + n > N for s, n in zip(seq_starts, seq_lengths)):
        raise ValueError(f"segments must lie within the {N} packed positions")
    segments = [(s, n) for s, n in zip(seq_starts, seq_lengths) if n > 0]
    kernel = _prefill_kernel(query, key, value) if segments else None
    if kernel is None:
        out = query.new_zeros(N, Hq, D)
        _prefill_sdpa(query, key, value, segments, scale, out)
        return out
    rows = query.transpose(0, 1)  # [N, Hq, D]
    if not rows.is_contiguous():
        rows = rows.contiguous()
    if key.stride(2) != 1:
        key = key.contiguous()
    if value.stride(2) != 1:
        value = value.contiguous()
    table = array.array("q", [s for s, _ in segments] + [n for _, n in segments])
    out = torch.zeros_like(rows)
    status = kernel.prefill(
        rows.data_ptr(),
        key.data_ptr(),
        value.data_ptr(),
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        table.buffer_info()[0],
        len(segments),
        Hq,
        key.shape[0],
        D,
        scale,
        _DTYPE_CODES[query.dtype],
        torch.get_num_threads(),
        out.data_ptr(),
    )
    if status == -2:
        raise MemoryError(f"ragged prefill kernel: no memory for the transposed keys of a {N}-token row")
    if status != 0:
        raise ValueError(f"ragged prefill kernel rejected Hq={Hq} Hkv={key.shape[0]} D={D}")
    return out


def _prefill_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> _Kernel | None:
    """The kernel, if it may take these prefill tensors (any strides: prefill_attention copies)."""
    if _switched_off():
        return None
    if query.dtype not in _DTYPE_CODES or key.dtype != query.dtype or value.dtype != query.dtype:
        _fallback_because(f"prefill dtypes {query.dtype}/{key.dtype}/{value.dtype}")
        return None
    if not (query.is_cpu and key.is_cpu and value.is_cpu):
        _fallback_because("prefill tensors are not on the CPU")
        return None
    return _loader.get()


def _prefill_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    segments: list[tuple[int, int]],
    scale: float,
    out: torch.Tensor,
) -> None:
    """`sdpa(is_causal=True)` per segment, into out [N, Hq, D]."""
    gqa = key.shape[0] != query.shape[0]
    for s, n in segments:
        part = F.scaled_dot_product_attention(
            query[:, s : s + n], key[:, s : s + n], value[:, s : s + n], scale=scale, is_causal=True, enable_gqa=gqa
        )
        out[s : s + n] = part.transpose(0, 1)


def prefill_attention_torch(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    seq_starts: list[int],
    seq_lengths: list[int],
    scale: float,
) -> torch.Tensor:
    """The pure-torch version of prefill_attention: `sdpa(is_causal=True)` per segment."""
    out = query.new_zeros(query.shape[1], query.shape[0], query.shape[2])
    _prefill_sdpa(query, key, value, [(s, n) for s, n in zip(seq_starts, seq_lengths) if n > 0], scale, out)
    return out
