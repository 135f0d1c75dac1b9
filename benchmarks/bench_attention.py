"""Chapter 5: fused attention against torch's scaled_dot_product_attention (SDPA), side by side in one run.

CPU (default): geobook's `flash_attention(backend='cpu')` (serial `nogil` Numba kernels, one stripe of work items per
thread of a persistent pool, `numba.get_num_threads()` threads) vs `torch.nn.functional.scaled_dot_product_attention`
on the CPU; B=1, H=8, D=64, float32, causal and not, forward and forward+backward, both contestants at every N (SDPA's
CPU backward is a fused kernel on torch 2.x: it does not materialise N×N); median time and peak extra memory of one
call -> benchmarks/results/attention.json, with the CPU model and its SIMD flags (machine.cpu_flags), the thread count
and OMP_WAIT_POLICY.
  --quick: N in {1024, 4096}, 3 repeats; the full run adds N = 16384 (slow: minutes per configuration on 2 cores).

GPU: `--gpu` runs benchmarks/bench_attention_gpu.py (the same as benchmarks/gpu_run.sh): correctness of the Numba CUDA
kernels against float64 and CUDA-event timings against SDPA -> benchmarks/results/attention_gpu.json.
"""
from __future__ import annotations
import argparse, os, sys
# torch's and numba's OpenMP thread pools both busy-wait after a parallel region; on a machine with few cores each
# then steals the other's CPUs (measured here: a 512k-element torch.isfinite took 60 ms instead of 1 ms right after a
# numba kernel, and the kernel ran 3x slower right after torch ops). Passive waiting must be chosen before either
# OpenMP runtime loads, i.e. before importing torch; it applies to both contestants alike.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import ctypes
try:   # glibc keeps freed memory and raises its mmap threshold after large frees, hiding new allocations from the
    ctypes.CDLL('libc.so.6').mallopt(-3, 128 * 1024)   # resident size: fix M_MMAP_THRESHOLD so peak RSS is honest
except OSError:
    pass
import torch
from _bench import measure, write_results, machine_info
from geobook.attention import flash_attention

sdpa = torch.nn.functional.scaled_dot_product_attention


def _inputs(N, device, requires_grad=False, B=1, H=8, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(B, H, N, D, generator=g).to(device) for _ in range(4)]
    if requires_grad:
        for t in ts[:3]: t.requires_grad_()
    return ts


def _fns(q, k, v, do, causal, backend, passes):
    if passes == 'forward':
        with_grad = False
        f1 = lambda: flash_attention(q, k, v, causal=causal, backend=backend)
        f2 = lambda: sdpa(q, k, v, is_causal=causal)
    else:
        def f1():
            q.grad = k.grad = v.grad = None
            flash_attention(q, k, v, causal=causal, backend=backend).backward(do)
        def f2():
            q.grad = k.grad = v.grad = None
            sdpa(q, k, v, is_causal=causal).backward(do)
    return f1, f2


def cpu_sizes(quick):
    return [1024, 4096] if quick else [1024, 4096, 16384]


def cpu_configs(quick):
    "(pass, N, causal) measured on the CPU: every size for both passes and both contestants."
    return [(passes, N, causal) for passes in ('forward', 'fwd+bwd') for N in cpu_sizes(quick) for causal in (False, True)]


def run_cpu(quick):
    rows = []
    for passes, N, causal in cpu_configs(quick):
        q, k, v, do = _inputs(N, 'cpu', requires_grad=passes != 'forward')
        f1, f2 = _fns(q, k, v, do, causal, 'cpu', passes)
        reps = 3 if (quick or N <= 4096) else 2
        a = measure(f1, repeats=reps, warmup=1)
        b = measure(f2, repeats=reps, warmup=1)
        rows.append({'pass': passes, 'N': N, 'causal': causal, 'B': 1, 'H': 8, 'D': 64,
                     'flash_s': a['median_s'], 'sdpa_s': b['median_s'], 'flash_mb': a['peak_mb'],
                     'sdpa_mb': b['peak_mb'], 'flash_runs': a['runs'], 'sdpa_runs': b['runs']})
        print(f"[cpu {passes:7} N={N:5d} causal={causal!s:5}] flash {a['median_s']:.3f}s {a['peak_mb']:.0f}MB"
              f" | sdpa {b['median_s']:.3f}s {b['peak_mb']:.0f}MB | ratio {a['median_s'] / b['median_s']:.2f}",
              flush=True)
    import numba
    write_results('attention', rows, quick=quick, threads=torch.get_num_threads(), numba_threads=numba.get_num_threads(),
                  omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'))


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--gpu', action='store_true')
    args, rest = ap.parse_known_args()
    if args.gpu:
        import bench_attention_gpu
        bench_attention_gpu.main(rest + (['--quick'] if args.quick else []))
    else:
        run_cpu(args.quick)
