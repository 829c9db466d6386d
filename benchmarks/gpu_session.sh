#!/usr/bin/env bash
# One device session (issue #14): the full preset of the given chapters on CUDA, recorded into
# book/full_scale.csv and book/full/, then the benchmark at its full sizes into
# benchmarks/README.md. Everything it writes is also copied under $OUT (the device tool brings
# that folder back). Usage, from the repository root on the GPU machine:
#   OUT=/tmp/out bash benchmarks/gpu_session.sh [chapter ...]   (default: every chapter)
# Each step is cut at STEP_LIMIT seconds (default 240), so one call fits a 600 s device call.
set -uo pipefail
OUT=${OUT:-_build/gpu}
LIMIT=${STEP_LIMIT:-240}
mkdir -p "$OUT"
make bootstrap >"$OUT/bootstrap.log" 2>&1 || { tail -20 "$OUT/bootstrap.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.csv"
for chapter in "${@:-}"; do
  timeout "$LIMIT" .venv/bin/python -m mtgmm --record ${chapter:+--chapters "$chapter"} \
    --out "$OUT/full" 2>&1 | grep -v "Kernel is running over TCP" | tee -a "$OUT/full.log"
done
timeout "$LIMIT" env PYTHONPATH=lib .venv/bin/python benchmarks/bench.py --full \
  --device cuda --readme 2>&1 | tee "$OUT/bench.log"
cp -r book/full_scale.csv book/full benchmarks/README.md "$OUT/"
