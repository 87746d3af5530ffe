#!/usr/bin/env bash
# A separate virtual environment with garak (NVIDIA's LLM vulnerability scanner), for running
# its probes against `lmforge serve` and for tests/test_redteam_garak.py (pytest -m garak).
#
# Why a venv of its own: garak 0.17 pins transformers<5.20, openai 2.x, datasets 5.x, langchain
# and some forty other packages that lmforge's venv must not be held to. It shares only torch
# (the CPU wheel that constraints.txt pins), installed first so pip keeps the CPU build.
#
#   bash docs/deploy/garak_env.sh [VENV]   # default: $LMFORGE_GARAK_VENV or garak-venv beside
#                                          # the repository
#
# The test finds garak's python at $LMFORGE_GARAK_PYTHON, else VENV/bin/python.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${LMFORGE_GARAK_VENV:-$repo/../garak-venv}}"
garak_spec="${GARAK_SPEC:-garak==0.17.1}"  # or a downloaded wheel's path

python3 -m venv "$venv"
"$venv/bin/pip" install -c "$repo/constraints.txt" torch==2.13.0
"$venv/bin/pip" install -c "$repo/constraints.txt" "$garak_spec"
"$venv/bin/python" -m garak --version
