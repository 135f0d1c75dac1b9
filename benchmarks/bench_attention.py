"""Chapter 5: fused attention against torch's scaled_dot_product_attention, side by side in one run.

CPU (default): geobook's `flash_attention(backend='cpu')` (Numba, njit(parallel=True)) vs
`torch.nn.functional.scaled_dot_product_attention` on the CPU; B=1, H=8, D=64, float32, causal and not, forward and
forward+backward; median time and peak extra memory of one call -> benchmarks/results/attention.json.
  --quick: N in {1024, 4096}, 3 repeats (about two minutes on 2 cores); default adds N=16384 (slow).

GPU (--gpu, on a machine with a CUDA GPU): first the Numba CUDA kernels' correctness against the float64 reference
(output, lse, dq/dk/dv; causal and not; ragged N; 2-D neighborhood attention), then forward and forward+backward
against SDPA in float32 on the same GPU, N in {1024, 4096, 16384} -> benchmarks/results/attention_gpu.json
(or --out PATH).
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
from geobook.attention import (flash_attention, attention_reference, neighborhood_attention,
                               neighborhood_attention_reference)

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


def run_cpu(quick):
    Ns = [1024, 4096] if quick else [1024, 4096, 16384]
    rows = []
    for passes in ('forward', 'fwd+bwd'):
        for N in Ns:
            if passes == 'fwd+bwd' and N > 4096: continue      # SDPA's CPU backward materialises N×N: minutes
            for causal in (False, True):
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
    write_results('attention', rows, quick=quick, threads=torch.get_num_threads(),
                  omp_wait_policy=os.environ.get('OMP_WAIT_POLICY'))


def _gpu_check():
    "Max errors of the CUDA kernels against the float64 reference on the real GPU."
    out = {}
    cases = [('flash_full', flash_attention, attention_reference, (2, 3, 300, 64), (2, 3, 300, 64), {}),
             ('flash_causal', flash_attention, attention_reference, (2, 3, 300, 64), (2, 3, 300, 64), {'causal': True}),
             ('flash_causal_nq_gt_nk_d128', flash_attention, attention_reference, (1, 2, 150, 128), (1, 2, 97, 128),
              {'causal': True}),
             ('na1d_k9_dil3', neighborhood_attention, neighborhood_attention_reference, (1, 2, 500, 32),
              (1, 2, 500, 32), {'kernel_size': 9, 'dilation': 3}),
             ('na2d_k5x7_causal', neighborhood_attention, neighborhood_attention_reference, (1, 2, 24, 30, 32),
              (1, 2, 24, 30, 32), {'kernel_size': (5, 7), 'dilation': (2, 1), 'causal': (False, True)})]
    for i, (name, fn, ref, sq, sk, kw) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        q, k, v, do = (torch.randn(*s, generator=g) for s in (sq, sk, sk, sq))
        qc, kc, vc = (t.cuda().requires_grad_() for t in (q, k, v))
        o, lse = fn(qc, kc, vc, return_lse=True, backend='cuda', **kw)
        (o * do.cuda()).sum().backward()
        q2, k2, v2 = (t.double().requires_grad_() for t in (q, k, v))
        o2, lse2 = ref(q2, k2, v2, return_lse=True, **kw)
        (o2 * do.double()).sum().backward()
        fin = torch.isfinite(lse2)
        e = lambda a, b: float((a.detach().cpu().double() - b.detach()).abs().max())
        out[name] = {'o': e(o, o2), 'lse': e(torch.where(fin.cuda(), lse, 0.), torch.where(fin, lse2, 0.)),
                     'dq': e(qc.grad, q2.grad), 'dk': e(kc.grad, k2.grad), 'dv': e(vc.grad, v2.grad),
                     'masked_rows': int((~fin).sum()), 'device': str(o.device)}
        print(name, out[name], flush=True)
    return out


def run_gpu(out_path, quick):
    assert torch.cuda.is_available()
    check = _gpu_check()
    rows = []
    Ns = [1024, 4096] if quick else [1024, 4096, 16384]
    for passes in ('forward', 'fwd+bwd'):
        for N in Ns:
            for causal in (False, True):
                q, k, v, do = _inputs(N, 'cuda', requires_grad=passes != 'forward')
                f1, f2 = _fns(q, k, v, do, causal, 'cuda', passes)
                reps = 5 if N <= 4096 else 3
                a = measure(f1, repeats=reps, warmup=1, cuda=True)
                b = measure(f2, repeats=reps, warmup=2, cuda=True)
                rows.append({'pass': passes, 'N': N, 'causal': causal, 'B': 1, 'H': 8, 'D': 64,
                             'flash_s': a['median_s'], 'sdpa_s': b['median_s'], 'flash_mb': a['peak_mb'],
                             'sdpa_mb': b['peak_mb']})
                print(f"[gpu {passes:7} N={N:5d} causal={causal!s:5}] numba {1e3 * a['median_s']:.2f}ms"
                      f" | sdpa {1e3 * b['median_s']:.2f}ms | ratio {a['median_s'] / b['median_s']:.1f}", flush=True)
    # NA on the GPU: a 2-D 64×64 grid, kernel 7×7, against full attention over the same 4096 tokens
    q, k, v, _ = _inputs(4096, 'cuda')
    r = lambda t: t.reshape(1, 8, 64, 64, 64)
    na = measure(lambda: neighborhood_attention(r(q), r(k), r(v), 7, backend='cuda'), repeats=5, warmup=1, cuda=True)
    full = measure(lambda: flash_attention(q, k, v, backend='cuda'), repeats=5, warmup=1, cuda=True)
    extra = {'na2d_64x64_k7_s': na['median_s'], 'flash_full_4096_s': full['median_s']}
    print('NA 2-D 64x64 k=7:', extra, flush=True)
    import json
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps({'benchmark': 'attention_gpu', 'machine': machine_info(), 'check': check,
                                          'rows': rows, **extra}, indent=1) + '\n')
    print('wrote', out_path)


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--gpu', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'attention_gpu.json'))
    args = ap.parse_args()
    run_gpu(args.out, args.quick) if args.gpu else run_cpu(args.quick)
