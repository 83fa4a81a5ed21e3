#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on a bare GPU machine: every method of preset `paper` for a few steps,
# timed against the paper's RST tables, plus the CUDA-only code paths. Writes OUT_DIR/gpu_check.json and the log.
# Needs the checkout and python with torch, transformers, tokenizers, datasets, numpy; no network.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, transformers, tokenizers, datasets, numpy" || {
  echo "gpu_check: a package ntng needs is missing (torch, transformers, tokenizers, datasets, numpy)" >&2; exit 2; }
timeout 560 "$PYTHON" benchmarks/gpu_check.py --out "$out/gpu_check.json" 2>&1 | tee "$out/gpu_check.log"
