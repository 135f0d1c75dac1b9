"""Sliced Wasserstein: geobook's sorted-rows fast path against POT and against naive project-and-sort.

For each (n, d, L) the same clouds X, Y ~ N(0, I), N(0.5, I) in R^d and the SAME (d, L) directions go to
  - geobook  `sliced_wasserstein(X, Y, projections=θ)` (rows of θᵀXᵀ sorted with NumPy in threads, chunked),
  - POT      `ot.sliced_wasserstein_distance(X, Y, projections=θ)`,
  - naive    `np.sort(X @ θ, axis=0)` and `torch.sort(X @ θ, dim=0)` (project to (n, L), sort the columns),
and, with gradients, geobook's custom backward against autograd through `torch.sort`.
Median wall time, peak extra resident memory, and ratios are printed per measurement and written to
benchmarks/results/sliced.json (read by chapter 4).

    python benchmarks/bench_sliced.py            # the full grid n in {1e4, 1e5, 1e6}, d in {3, 64}, L in {50, 500}
    python benchmarks/bench_sliced.py --quick    # a subset that finishes in about two minutes on two cores
"""
from __future__ import annotations
import argparse, json, sys, time, tracemalloc
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import measure, write_results, RESULTS
import ot
from geobook.sliced import sliced_wasserstein, sample_projections

FULL = [(n, d, L) for n in (10_000, 100_000, 1_000_000) for d in (3, 64) for L in (50, 500)]
QUICK = [(10_000, 3, 50), (10_000, 3, 500), (10_000, 64, 500), (100_000, 3, 50), (100_000, 64, 50)]
POT_MAX_BYTES = 6 << 30        # POT materialises two (n, L) float64 arrays (and sorts copies): skip it beyond this
GRAD_MAX_NL = 5 * 10**7        # forward+backward comparisons up to n·L = 5e7


def traced_mb(fn) -> float:
    """Peak of NumPy's (and Python's) heap allocations during one run, by tracemalloc: unlike RSS, it also counts memory
    that the allocator reuses from earlier runs. torch's own allocations are not traced (geobook hands work to NumPy)."""
    tracemalloc.start(); fn(); peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    return peak / 2**20


def timed(fn, budget_s: float, repeats: int):
    "measure() with fewer repeats (and no warm-up) when one run already takes more than `budget_s`."
    t0 = time.perf_counter(); fn(); first = time.perf_counter() - t0
    if first > budget_s: return measure(fn, repeats=1, warmup=0) | {'first_s': first}
    return measure(fn, repeats=repeats, warmup=0) | {'first_s': first}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='the small subset (about two minutes here)')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--no-pot', action='store_true', help='skip POT (e.g. to run only the largest sizes)')
    ap.add_argument('--config', nargs=3, type=int, action='append', metavar=('N', 'D', 'L'),
                    help='run only these (n, d, L) (repeatable) and merge the rows into the existing JSON')
    args = ap.parse_args(argv)
    grid = [tuple(c) for c in args.config] if args.config else (QUICK if args.quick else FULL)
    rows = []
    for i, (n, d, L) in enumerate(grid):
        rng = np.random.default_rng(0)
        X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
        th = sample_projections(d, L, seed=0).numpy()
        Xt, Yt, tht = torch.from_numpy(X), torch.from_numpy(Y), torch.from_numpy(th)
        row = {'n': n, 'd': d, 'L': L}
        ours = timed(lambda: sliced_wasserstein(Xt, Yt, projections=tht), 5.0, args.repeats)
        row.update(ours_s=ours['median_s'], ours_min_s=ours['min_s'], ours_mb=ours['peak_mb'], ours_runs=ours['runs'],
                   ours_traced_mb=traced_mb(lambda: sliced_wasserstein(Xt, Yt, projections=tht)))
        val = sliced_wasserstein(Xt, Yt, projections=tht).item()
        if not args.no_pot and 2 * n * L * 8 * 2 <= POT_MAX_BYTES:
            pot = timed(lambda: ot.sliced_wasserstein_distance(X, Y, projections=th), 5.0, args.repeats)
            row.update(pot_s=pot['median_s'], pot_min_s=pot['min_s'], pot_mb=pot['peak_mb'], pot_runs=pot['runs'],
                       pot_traced_mb=traced_mb(lambda: ot.sliced_wasserstein_distance(X, Y, projections=th)),
                       speedup_vs_pot=pot['median_s'] / ours['median_s'],
                       rel_diff_vs_pot=abs(val - ot.sliced_wasserstein_distance(X, Y, projections=th)) / val)
        if 2 * n * L * 8 <= POT_MAX_BYTES:
            nn_ = timed(lambda: np.sqrt(np.mean((np.sort(X @ th, 0) - np.sort(Y @ th, 0))**2)), 5.0, args.repeats)
            nt = timed(lambda: ((torch.sort(Xt @ tht, 0).values - torch.sort(Yt @ tht, 0).values)**2).mean().sqrt(),
                       5.0, args.repeats)
            row.update(naive_numpy_s=nn_['median_s'], naive_numpy_mb=nn_['peak_mb'],
                       naive_numpy_traced_mb=traced_mb(lambda: np.sort(X @ th, 0) - np.sort(Y @ th, 0)),
                       naive_torch_s=nt['median_s'], naive_torch_mb=nt['peak_mb'],
                       ratio_vs_best_naive=ours['median_s'] / min(nn_['median_s'], nt['median_s']))
        if n * L <= (GRAD_MAX_NL // 10 if args.quick else GRAD_MAX_NL):
            Xg = Xt.clone().requires_grad_(True)
            def ours_grad():
                sliced_wasserstein(Xg, Yt, projections=tht).backward(); Xg.grad = None
            def sort_grad():
                ((torch.sort(Xg @ tht, 0).values - torch.sort(Yt @ tht, 0).values)**2).mean().sqrt().backward()
                Xg.grad = None
            og, sg = timed(ours_grad, 5.0, args.repeats), timed(sort_grad, 5.0, args.repeats)
            row.update(ours_grad_s=og['median_s'], ours_grad_mb=og['peak_mb'],
                       torch_sort_grad_s=sg['median_s'], torch_sort_grad_mb=sg['peak_mb'])
        rows.append(row)
        fmt = lambda k, f='{:.3f}': f.format(row[k]) if k in row else '-'
        print(f"[{i + 1}/{len(grid)}] n={n:>8} d={d:>2} L={L:>3}: geobook {fmt('ours_s')} s ({fmt('ours_traced_mb', '{:.0f}')} MB) | "
              f"POT {fmt('pot_s')} s ({fmt('pot_traced_mb', '{:.0f}')} MB) -> {fmt('speedup_vs_pot', '{:.1f}')}x | "
              f"naive np {fmt('naive_numpy_s')} s, torch {fmt('naive_torch_s')} s | "
              f"grad: geobook {fmt('ours_grad_s')} s, torch.sort {fmt('torch_sort_grad_s')} s", flush=True)
    label = 'quick' if args.quick else 'full'
    if args.config:                          # merge: keep earlier rows of other sizes, replace the re-measured ones
        old = json.loads((RESULTS / 'sliced.json').read_text()) if (RESULTS / 'sliced.json').exists() else {}
        done = {(r['n'], r['d'], r['L']) for r in rows}
        rows = [r for r in old.get('rows', []) if (r['n'], r['d'], r['L']) not in done] + rows
        rows.sort(key=lambda r: (r['n'], r['d'], r['L']))
        label = old.get('grid', 'quick') + ' + ' + ' '.join(f'({n},{d},{L})' for n, d, L in sorted(done))
    write_results('sliced', rows, packages=('torch', 'numpy', 'pot', 'geobook'),
                  grid=label, threads={'torch': torch.get_num_threads()},
                  note='same clouds and same (d, L) projections for every method; times are medians; *_mb is the peak '
                       'extra RSS of one run (undercounts memory the allocator reuses), *_traced_mb the tracemalloc peak '
                       'of NumPy/Python allocations; machine shared with other jobs, so absolute times are noisy')


if __name__ == '__main__':
    main()
