#!/usr/bin/env bash
# The AdapterHub side of the interop tests (tests/io/test_adapterhub_format.py) in its own
# venv: AdapterHub `adapters` 1.3 needs transformers 4.57, keras-adapters uses transformers 5.
# PyTorch is the CPU wheel; nothing here is needed at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv-adapterhub/bin/python ] || "$PYTHON" -m venv .venv-adapterhub
.venv-adapterhub/bin/python -m pip install -q --disable-pip-version-check \
    "torch==2.13.0" "transformers==4.57.6" "adapters==1.3.0"
