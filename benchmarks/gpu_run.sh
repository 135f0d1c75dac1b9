#!/usr/bin/env bash
# Chapter 5's GPU measurement in one command (issue 18, part 3): correctness of the Numba CUDA kernels against float64,
# CUDA-event timings against torch SDPA (N ∈ {1024, 4096, 16384}, D ∈ {64, 128}, float32 and bfloat16, causal and not,
# forward and forward+backward), 2-D neighborhood attention, registers per kernel; and (part 2) the tensor-core kernels:
# their first-call check, GEMM and attention against float64 and the NumPy emulator, timings against the tiled kernels and
# SDPA (bfloat16, float16, float32) -> benchmarks/results/attention_gpu.json (rewritten after every step). See
# benchmarks/bench_attention_gpu.py. The tensor-core kernels link CUDA C++ with LTO: they need nvJitLink and NVRTC
# (numba-cuda[cu12] or [cu13]); without them the check records why and the tiled kernels run.
#
#   benchmarks/gpu_run.sh          on a machine with an NVIDIA GPU: at most 7 minutes (timings stop starting after
#                                  --budget-s, default 330 s; the whole run is killed at 420 s)
#   benchmarks/gpu_run.sh --dry    anywhere, CPU only: the same code under Numba's CUDA simulator on tiny shapes, to
#                                  show it parses, imports and runs; writes /tmp/attention_gpu_dry.json
#   benchmarks/gpu_run.sh --only tensor_cores [--base IN.json] [--out OUT.json]
#                                  the tensor-core section alone (≤ 2 minutes on an H200, compilation included), written
#                                  into a copy of an earlier full run's JSON (--base, default the committed
#                                  benchmarks/results/attention_gpu.json) at --out; with --dry, under the simulator
# Extra arguments go to the Python script (e.g. --quick, --budget-s 200, --out PATH). Needs torch (a CUDA build on the
# GPU), numpy, numba and numba-cuda; PYTHON=... picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GEOBOOK_NO_PROGRESS=1
if [ "${1:-}" = "--dry" ]; then
  shift
  export NUMBA_ENABLE_CUDASIM=1        # must be set before numba is imported
  exec timeout 600 "$PY" benchmarks/bench_attention_gpu.py --dry "$@"
fi
unset NUMBA_ENABLE_CUDASIM
if ! "$PY" -c 'import torch, numba.cuda as c; assert torch.cuda.is_available(), "torch sees no CUDA GPU"; assert c.is_available(), "numba-cuda sees no GPU"'; then
  echo "gpu_run.sh: no usable GPU for torch and numba-cuda with $PY (set PYTHON=...; pip install numba-cuda[cu12] or [cu13]); try --dry" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
exec timeout 420 "$PY" benchmarks/bench_attention_gpu.py "$@"
