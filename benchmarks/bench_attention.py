"""Chapter 5: fused attention against torch's scaled_dot_product_attention (SDPA), side by side in one run.

CPU (default): geobook's `flash_attention(backend='cpu')` (serial `nogil` Numba kernels, one stripe of work items per
thread of a persistent pool, `numba.get_num_threads()` threads) vs `torch.nn.functional.scaled_dot_product_attention`
on the CPU; B=1, H=8, D=64, float32, causal and not, forward and forward+backward, both contestants at every N (SDPA's
CPU backward is a fused kernel on torch 2.x: it does not materialise N×N); the contestants timed in turn, one run of
each per round (medians), and the peak extra memory of one call. Forward+backward rows also time our backward forced
onto its two kernels (`flash_two_kernels_s`; the default fuses them where the heads share the threads evenly), and
`backward_kernels` holds the CPU time of the three backward kernels alone on one thread (N = 2048, 8 heads).
-> benchmarks/results/attention.json, with the CPU model and its SIMD flags (machine.cpu_flags), the thread count and
OMP_WAIT_POLICY.
  --quick: N in {1024, 4096}, 3 repeats; the full run adds N = 16384 (slow: minutes per configuration on 2 cores).

GPU: `--gpu` runs benchmarks/bench_attention_gpu.py (the same as benchmarks/gpu_run.sh): correctness of the Numba CUDA
kernels against float64 and CUDA-event timings against SDPA -> benchmarks/results/attention_gpu.json.
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
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
import numpy as np
import geobook.attention as A
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


def interleaved(fns: dict, reps: int) -> dict:
    """{name: measure()-like dict} for the functions in `fns`, timed in turn (one warm-up each, then `reps` rounds of one
    run of each): every contestant meets the same machine state. Peak memory: one more run of each alone."""
    for f in fns.values(): f()
    times = {n: [] for n in fns}
    for _ in range(reps):
        for n, f in fns.items():
            t0 = time.perf_counter(); f(); times[n].append(time.perf_counter() - t0)
    return {n: {'median_s': statistics.median(t), 'runs': t, 'peak_mb': measure(fns[n], repeats=1, warmup=0)['peak_mb']}
            for n, t in times.items()}


def run_cpu(quick):
    rows = []
    for passes, N, causal in cpu_configs(quick):
        q, k, v, do = _inputs(N, 'cpu', requires_grad=passes != 'forward')
        f1, f2 = _fns(q, k, v, do, causal, 'cpu', passes)
        fns = {'flash': f1, 'sdpa': f2}
        if passes == 'fwd+bwd': fns['flash_2k'] = two_kernels(f1)
        m = interleaved(fns, 3 if (quick or N <= 4096) else 2)
        a, b = m['flash'], m['sdpa']
        row = {'pass': passes, 'N': N, 'causal': causal, 'B': 1, 'H': 8, 'D': 64,
               'flash_s': a['median_s'], 'sdpa_s': b['median_s'], 'flash_mb': a['peak_mb'],
               'sdpa_mb': b['peak_mb'], 'flash_runs': a['runs'], 'sdpa_runs': b['runs']}
        if 'flash_2k' in m: row.update(flash_two_kernels_s=m['flash_2k']['median_s'], flash_two_kernels_runs=m['flash_2k']['runs'])
        rows.append(row)
        print(f"[cpu {passes:7} N={N:5d} causal={causal!s:5}] flash {a['median_s']:.3f}s {a['peak_mb']:.0f}MB"
              f" | sdpa {b['median_s']:.3f}s {b['peak_mb']:.0f}MB | ratio {a['median_s'] / b['median_s']:.2f}"
              + (f" | backward as two kernels: {m['flash_2k']['median_s']:.3f}s" if 'flash_2k' in m else ''),
              flush=True)
    return rows


def two_kernels(f):
    "f, with the CPU backward forced onto its two kernels (`_fuse_backward` returning False) while it runs."
    def run():
        saved = A._fuse_backward
        A._fuse_backward = lambda BH, threads: False
        try: f()
        finally: A._fuse_backward = saved
    return run


def backward_kernels(N: int = 2048, BH: int = 8, D: int = 64, reps: int = 5) -> dict:
    """CPU time of the backward kernels alone on one thread (full mask, float32, the forward's statistics as input):
    dK/dV (`_flash_bwd_dkdv_cpu`), dQ (`_flash_bwd_dq_cpu`) and both fused (`_flash_bwd_fused_cpu`), medians of `reps`
    interleaved runs; fused − dK/dV is what the dQ product costs inside the fused kernel, (dK/dV + dQ) − fused what
    fusing saves (the second S, dP and exponentials)."""
    import numba
    g = np.random.default_rng(0)
    q, k, v, do = (g.standard_normal((BH, N, D)).astype(np.float32) for _ in range(4))
    o, ml = np.empty_like(q), np.empty((2, BH, N), np.float32)
    prev = numba.get_num_threads(); numba.set_num_threads(1)
    try:
        A._on_threads(A._flash_fwd_cpu, q, k, v, np.float32(D ** -0.5), False, 0, o, ml[0], ml[1])
        delta = (do * o).sum(-1).astype(np.float32)
        args = (q, k, v, do, ml[0], ml[1], delta, np.float32(D ** -0.5), False, 0)
        dq, dk, dv = (np.empty_like(q) for _ in range(3))
        fns = {'dkdv': lambda: A._on_threads(A._flash_bwd_dkdv_cpu, *args, dk, dv),
               'dq': lambda: A._on_threads(A._flash_bwd_dq_cpu, *args, dq),
               'fused': lambda: A._on_threads(A._flash_bwd_fused_cpu, *args, dk, dv, dq)}
        for f in fns.values(): f()
        cpu = {n: [] for n in fns}
        for _ in range(reps):
            for n, f in fns.items():
                c0 = time.process_time(); f(); cpu[n].append(time.process_time() - c0)
    finally: numba.set_num_threads(prev)
    out = {f'{n}_cpu_s': statistics.median(t) for n, t in cpu.items()} | {'N': N, 'BH': BH, 'D': D, 'threads': 1}
    print(f"[backward kernels, one thread, N={N}, BH={BH}] dK/dV {out['dkdv_cpu_s']:.3f}s, dQ {out['dq_cpu_s']:.3f}s, "
          f"fused {out['fused_cpu_s']:.3f}s", flush=True)
    return out




def main_cpu(quick):
    rows, kernels = run_cpu(quick), backward_kernels()
    import numba
    write_results('attention', rows, quick=quick, backward_kernels=kernels, threads=torch.get_num_threads(), numba_threads=numba.get_num_threads(),
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
        main_cpu(args.quick)
