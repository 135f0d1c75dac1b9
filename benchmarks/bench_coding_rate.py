"""Benchmark geobook.coding_rate against the direct computations, side by side in one run.

R(Z, ε): `coding_rate` (smaller Gram matrix + Cholesky) vs `torch.logdet` of the d×d matrix I + α ZᵀZ.
ΔR(Z, Π, ε): `coding_rate_reduction` with integer labels (classes grouped by size, each group in one batched Cholesky)
vs R by torch.logdet plus a Python loop over the classes (mask, Gram, torch.logdet), and, where it fits in memory, the
original MCR² code's way with an n×n diagonal membership matrix per class. Forward, and forward + backward.
d = 128, k = 10 balanced classes, n in {1e3, 1e4, 1e5}, float32, CPU; one unbalanced case (n = 20000, d = 64, k = 50:
one class of 19951 samples and 49 singletons); and one wide case (n = 256, d = 4096). Goal: at most 1.2× the loop's time
(median of the repeats: `ratio`; `ratio_min`, the ratio of the fastest runs, is recorded for reference) and peak memory
on every row.

    python benchmarks/bench_coding_rate.py [--quick] [--threads N]

Peak memory is the peak resident size above the start of one call. So that it measures that call's own allocations and
not what earlier calls left in the allocator's free lists, the script re-executes itself with glibc's allocator pinned
to serve every block of 64 kB or more by mmap and to return it on free (MALLOC_MMAP_THRESHOLD_=65536,
MALLOC_TRIM_THRESHOLD_=0); both functions of a row are then measured from the same state.

Writes benchmarks/results/coding_rate.json (read by nbs/03_coding_rate.ipynb).
"""
from __future__ import annotations
import argparse, os, sys
from pathlib import Path

_MALLOC = {'MALLOC_MMAP_THRESHOLD_': '65536', 'MALLOC_TRIM_THRESHOLD_': '0'}
if __name__ == '__main__' and any(os.environ.get(k) != v for k, v in _MALLOC.items()):   # see the docstring
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC})

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import measure, write_results          # noqa: E402
from geobook.coding_rate import coding_rate, coding_rate_reduction   # noqa: E402

EPS = 0.5

def ref_rate(Z, eps=EPS):
    "R by torch.logdet of the d×d matrix of the definition."
    n, d = Z.shape
    return 0.5 * torch.logdet(torch.eye(d, dtype=Z.dtype) + d / (n * eps**2) * Z.T @ Z)

def ref_reduction_loop(Z, y, k, eps=EPS):
    "ΔR with a Python loop over classes: boolean mask, class Gram matrix, torch.logdet."
    n, d = Z.shape
    R = ref_rate(Z, eps)
    Rc = 0.0
    for j in range(k):
        Zj = Z[y == j]
        nj = Zj.shape[0]
        Rc = Rc + nj / (2 * n) * torch.logdet(torch.eye(d, dtype=Z.dtype) + d / (nj * eps**2) * Zj.T @ Zj)
    return R - Rc

def ref_reduction_diag(Z, Pi, eps=EPS):
    "ΔR the way the original MCR² code does it: W = Zᵀ (d, n), Π_j as n×n diagonal matrices (k, n, n)."
    W = Z.T
    d, n = W.shape
    I = torch.eye(d, dtype=Z.dtype)
    R = torch.logdet(I + d / (n * eps**2) * W @ W.T) / 2
    Rc = 0.0
    for j in range(Pi.shape[0]):
        tr = torch.trace(Pi[j]) + 1e-8
        Rc = Rc + torch.logdet(I + d / (tr * eps**2) * W @ Pi[j] @ W.T) * tr / (2 * n)
    return R - Rc

def fwd_bwd(fn, Z):
    def run():
        Zg = Z.detach().requires_grad_()
        fn(Zg).backward()
    return run

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer repeats (about two minutes)')
    ap.add_argument('--threads', type=int, default=None, help="torch threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    repeats, warmup = (5, 1) if args.quick else (9, 2)
    d, k = 128, 10
    gen = torch.Generator().manual_seed(0)
    rows = []

    def record(quantity, n, dd, ours, ref, ref_name, kk=k):
        a = measure(ours, repeats, warmup); b = measure(ref, repeats, warmup)
        row = {'quantity': quantity, 'n': n, 'd': dd, 'k': kk, 'dtype': 'float32', 'reference': ref_name,
               'geobook_s': a['median_s'], 'reference_s': b['median_s'], 'ratio': b['median_s'] / a['median_s'],
               'geobook_min_s': a['min_s'], 'reference_min_s': b['min_s'], 'ratio_min': b['min_s'] / a['min_s'],
               'geobook_peak_mb': a['peak_mb'], 'reference_peak_mb': b['peak_mb']}
        rows.append(row)
        print(f"{quantity:24s} n={n:>6d} d={dd:>4d}  geobook {1e3 * row['geobook_s']:9.2f} ms   "
              f"{ref_name:30s} {1e3 * row['reference_s']:9.2f} ms   ratio {row['ratio']:6.2f} (of minima {row['ratio_min']:6.2f})",
              flush=True)

    for n in (1_000, 10_000, 100_000):
        Z = torch.randn(n, d, generator=gen)
        y = torch.arange(n) % k
        with torch.no_grad():
            torch.testing.assert_close(coding_rate(Z, EPS), ref_rate(Z), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(coding_rate_reduction(Z, y, EPS)[0], ref_reduction_loop(Z, y, k), rtol=1e-3, atol=1e-3)
            record('R', n, d, lambda: coding_rate(Z, EPS), lambda: ref_rate(Z), 'torch.logdet (d×d)')
            record('ΔR (labels)', n, d, lambda: coding_rate_reduction(Z, y, EPS), lambda: ref_reduction_loop(Z, y, k),
                   'per-class loop')
            if n <= 1_000:
                Pi = torch.zeros(k, n, n); Pi[y, torch.arange(n), torch.arange(n)] = 1.0
                torch.testing.assert_close(coding_rate_reduction(Z, y, EPS)[0], ref_reduction_diag(Z, Pi), rtol=1e-3, atol=1e-3)
                record('ΔR (labels)', n, d, lambda: coding_rate_reduction(Z, y, EPS), lambda: ref_reduction_diag(Z, Pi),
                       'original MCR² (diag Π, k×n×n)')
        record('ΔR forward+backward', n, d, fwd_bwd(lambda z: coding_rate_reduction(z, y, EPS)[0], Z),
               fwd_bwd(lambda z: ref_reduction_loop(z, y, k), Z), 'per-class loop')

    n, du, ku = 20_000, 64, 50                           # unbalanced: one large class and 49 singletons
    Z = torch.randn(n, du, generator=gen)
    y = torch.cat([torch.zeros(n - ku + 1, dtype=torch.long), torch.arange(1, ku)])[torch.randperm(n, generator=gen)]
    with torch.no_grad():
        torch.testing.assert_close(coding_rate_reduction(Z, y, EPS)[0], ref_reduction_loop(Z, y, ku), rtol=1e-3, atol=1e-3)
        record('ΔR (labels, unbalanced)', n, du, lambda: coding_rate_reduction(Z, y, EPS), lambda: ref_reduction_loop(Z, y, ku),
               'per-class loop', kk=ku)
    record('ΔR fwd+bwd (unbalanced)', n, du, fwd_bwd(lambda z: coding_rate_reduction(z, y, EPS)[0], Z),
           fwd_bwd(lambda z: ref_reduction_loop(z, y, ku), Z), 'per-class loop', kk=ku)

    n, dw = 256, 4096
    Z = torch.randn(n, dw, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(coding_rate(Z, EPS), ref_rate(Z), rtol=1e-3, atol=1e-3)
        record('R (wide, Sylvester)', n, dw, lambda: coding_rate(Z, EPS), lambda: ref_rate(Z), 'torch.logdet (d×d)')

    write_results('coding_rate', rows, packages=('torch', 'numpy', 'geobook'),
                  settings={'eps': EPS, 'repeats': repeats, 'warmup': warmup, 'quick': args.quick,
                            'threads': torch.get_num_threads(), 'malloc': _MALLOC})

if __name__ == '__main__':
    main()
