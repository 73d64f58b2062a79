#!/usr/bin/env bash
# The device check: on one GPU in under 8 minutes (benchmarks/device_check/__init__.py says what it measures).
#
#   benchmarks/device_check.sh                          # GPU: writes benchmarks/device_check.json, prints tables
#   benchmarks/device_check.sh --cpu --out /tmp/dry.json   # dry run, tiny sizes on the CPU
#
# Offline by construction: the corpus is generated, the models are built from proxies/*.json, and the hub
# is switched off. The driver keeps its own total budget (450 s on a GPU) and records every part as it
# ends; the outer `timeout` is only a backstop (SIGTERM: the driver records what it has and exits 143).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=470
for arg in "$@"; do [ "$arg" = "--cpu" ] && LIMIT=3900; done
exec timeout --signal=TERM --kill-after=15 "$LIMIT" "$PYTHON" -m benchmarks.device_check "$@"
