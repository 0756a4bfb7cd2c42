#!/usr/bin/env bash
# GPU acceptance check: align's GPU paths in one go on a machine with one CUDA GPU, in under 8 minutes.
#   bash benchmarks/gpu_check.sh [--out DIR] [--full] [--dry-run]      (or: make gpu-check)
# The GPU machine needs no network: the packages its Python lacks travel as wheels in benchmarks/wheels
# (`make gpu-wheels` here), installed into a private folder ($ALIGN_GPU_SITE) put first on PYTHONPATH; align itself
# runs from this working tree. Results: gpu_check.json and gpu_check.md in --out (default $OUT, else runs/gpu_check).
# --dry-run (or ALIGN_GPU_CHECK_DRY_RUN=1) installs nothing and runs everything up to the first CUDA call on the CPU.
# What each check does: benchmarks/gpu_check.py; how to run it on a lent GPU: benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
WHEELS=${ALIGN_GPU_WHEELS:-benchmarks/wheels}
SITE=${ALIGN_GPU_SITE:-/tmp/align_gpu_site}
DRY=${ALIGN_GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do [[ $arg == --dry-run ]] && DRY=1; done

wheels=$(ls "$WHEELS"/*.whl 2>/dev/null || true)
if [[ $DRY == 1 ]]; then
    echo "gpu_check: dry run, nothing installed; wheels that a GPU run would install: ${wheels:-none (make gpu-wheels)}"
elif [[ -n $wheels ]]; then
    echo "gpu_check: installing $(echo "$wheels" | wc -l) carried wheels into $SITE"
    # --no-deps: the wheels are exactly what that machine lacks; pip resolves nothing and needs no network
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $wheels
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "gpu_check: no wheels in $WHEELS: using $PYTHON's own packages (make gpu-wheels here, then carry $WHEELS)"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
[[ $DRY == 1 ]] && export ALIGN_GPU_CHECK_DRY_RUN=1
exec "$PYTHON" benchmarks/gpu_check.py "$@"
