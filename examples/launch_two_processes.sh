#!/usr/bin/env bash
# Run a recipe with two processes through an accelerate config file (data parallel).
#   bash examples/launch_two_processes.sh [RECIPE] [extra align run arguments...]
# On a CPU-only machine the two ranks talk over gloo; with GPUs each rank takes one GPU.
set -euo pipefail
recipe=${1:-recipes/quickstart.yaml}
shift || true
exec accelerate launch --config_file "$(dirname "$0")/../recipes/accelerate/two_processes.yaml" \
    -m align run "$recipe" "$@"
