#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: the GPU tests and the speed benchmark, in well under 5 minutes.
#   bash benchmarks/gpu_check.sh            (after: python3 -m venv .venv && .venv/bin/pip install .)
# Prints model-only images/s (fp32 / fp16 + channels_last, batch 1 and 8) and end-to-end frames/s with the time a
# frame takes, at 384x288 and 1920x1080, streaming vs serial. The goal at 1080p is under 33 ms a frame end to end
# (NVIDIA Holoscan's published end-to-end latency for its endoscopy tool-tracking app on an RTX A6000). The "ms a
# frame" printed is the steady-state time per frame (1 / throughput), not the latency of a single frame.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; assert torch.cuda.is_available(), 'CUDA not available to torch'; print(torch.cuda.get_device_name())"
timeout 240 $PY -m pytest -q -m gpu tests/test_gpu.py
timeout 300 $PY benchmarks/infer_speed.py --device cuda --loops 4
