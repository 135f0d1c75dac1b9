"""Sliced Wasserstein: where the time of the smallest grid call goes, quiet and under load (chapter 4, "Where the
smallest call's time goes").

At (n, d, L) = (1e4, 64, 50), the grid row of benchmarks/bench_sliced.py with the least margin, for each condition
('quiet': the machine as it is; 'loaded': one busy process per usable core beside it, as in bench_sliced.py):
  - geobook `sliced_wasserstein(X, Y, projections=θ)`: median wall time and CPU time per call (`time.process_time`:
    all threads of this process), 25 calls;
  - the work any project-and-sort method does, on one thread (BLAS limited by threadpoolctl): the two projections
    θᵀXᵀ, θᵀYᵀ into preallocated arrays, and the two row sorts (each on a copy, in place), medians of 10 (their CPU
    time over ours is `work_share_of_ours_cpu`: CPU, not wall, time, which a loaded machine stretches);
  - POT `ot.sliced_wasserstein_distance` with BLAS on its default threads and on one thread, wall and CPU, 5 calls each;
  - TRIALS interleaved trials of the grid's comparison (median of 9 calls of ours, then of 3 of POT): POT/ours per
    trial, so that the ratio's spread under each condition is on record (the grid measures each row once).
Same data and directions as the grid (seed 0). Each condition also records the CPU that other processes used while it
ran (`other_cpu_cores`, from /proc/stat: the cores' busy time minus this process's and the busy processes'). Writes benchmarks/results/sliced_anatomy.json with the machine, the
load and NumPy's sort dispatch (set NPY_DISABLE_CPU_FEATURES before running it to compare with an AVX2-sort grid).

    python benchmarks/bench_sliced_anatomy.py           # about a minute on two cores
"""
from __future__ import annotations
import argparse, os, sys, time
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import write_results
from bench_sliced import Hog
import ot
from threadpoolctl import threadpool_limits
from geobook.sliced import sliced_wasserstein, sample_projections, _n_threads

SIZE = (10_000, 64, 50)
TRIALS = 10
_TICK = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100


def _busy_s() -> float | None:
    "CPU seconds all cores have spent busy since boot (/proc/stat: all but idle and iowait), or None off Linux."
    try: v = list(map(int, open('/proc/stat').readline().split()[1:]))
    except OSError: return None
    return (sum(v) - v[3] - v[4]) / _TICK


def _cpu_s(pid: int) -> float:
    "User + system CPU seconds of process `pid` (all its threads), from /proc/<pid>/stat."
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / _TICK


class OtherCPU:
    """`with OtherCPU(pids) as o:` the cores' busy time during the block that neither this process nor `pids` (the busy
    processes of the loaded condition) used, over the block's wall time: other work on the machine, in cores
    (`o.cores`; None off Linux). A 1-minute load average cannot tell it from the benchmark's own threads."""
    def __init__(self, pids=()): self.pids, self.cores = list(pids), None
    def _mine(self): return _cpu_s(os.getpid()) + sum(_cpu_s(p) for p in self.pids)
    def __enter__(self):
        self.b0, self.m0, self.t0 = _busy_s(), self._mine(), time.perf_counter()
        return self
    def __exit__(self, *exc):
        b1 = _busy_s()
        if self.b0 is not None and b1 is not None:
            self.cores = max(0.0, (b1 - self.b0) - (self._mine() - self.m0)) / (time.perf_counter() - self.t0)


def clocks(f, k: int) -> dict:
    "Median wall and CPU seconds (`time.process_time`: every thread of this process) of k calls of f(), and the runs."
    wall, cpu = [], []
    for _ in range(k):
        c0, t0 = time.process_time(), time.perf_counter(); f()
        wall.append(time.perf_counter() - t0); cpu.append(time.process_time() - c0)
    return {'wall_s': float(np.median(wall)), 'cpu_s': float(np.median(cpu)), 'wall_runs': wall, 'cpu_runs': cpu}


def anatomy(condition: str, hog=None) -> dict:
    with OtherCPU([p.pid for p in hog.procs] if hog else []) as other: row = _anatomy(condition)
    row['other_cpu_cores'] = other.cores
    print(f"[{condition}] other work on the machine meanwhile: "
          + ('not measured' if other.cores is None else f"{other.cores:.2f} cores"), flush=True)
    return row


def _anatomy(condition: str) -> dict:
    n, d, L = SIZE
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.5
    th = sample_projections(d, L, seed=0).numpy()
    row = {'condition': condition, 'n': n, 'd': d, 'L': L, 'threads': _n_threads(),
           'load': [round(x, 2) for x in os.getloadavg()]}
    sliced_wasserstein(X, Y, projections=th)                                    # warm-up
    row['ours'] = clocks(lambda: sliced_wasserstein(X, Y, projections=th), 25)
    T, A, B, C = np.ascontiguousarray(th.T), *(np.empty((L, n)) for _ in range(3))
    def sorts():
        for M in (A, B): np.copyto(C, M); C.sort(axis=1)                        # a copy, sorted in place
    with threadpool_limits(1):
        row['projections_one_thread'] = clocks(lambda: (np.matmul(T, X.T, out=A), np.matmul(T, Y.T, out=B)), 10)
        row['sorts_one_thread'] = clocks(sorts, 10)
    pot = lambda: ot.sliced_wasserstein_distance(X, Y, projections=th)
    pot()
    row['pot'] = clocks(pot, 5)
    with threadpool_limits(1): row['pot_blas_one_thread'] = clocks(pot, 5)
    row['trials'] = []
    for _ in range(TRIALS):
        o, p = clocks(lambda: sliced_wasserstein(X, Y, projections=th), 9), clocks(pot, 3)
        row['trials'].append({'ours_s': o['wall_s'], 'pot_s': p['wall_s'], 'speedup_vs_pot': p['wall_s'] / o['wall_s']})
    row['work_share_of_ours_cpu'] = (row['projections_one_thread']['cpu_s'] + row['sorts_one_thread']['cpu_s']) / row['ours']['cpu_s']
    row['load_after'] = [round(x, 2) for x in os.getloadavg()]
    print(f"[{condition}] ours {row['ours']['wall_s'] * 1e3:.1f} ms wall, {row['ours']['cpu_s'] * 1e3:.1f} ms CPU | "
          f"one thread (CPU time): projections {row['projections_one_thread']['cpu_s'] * 1e3:.1f} ms, sorts "
          f"{row['sorts_one_thread']['cpu_s'] * 1e3:.1f} ms ({row['work_share_of_ours_cpu']:.0%} of our CPU) | POT "
          f"{row['pot']['wall_s'] * 1e3:.0f} ms wall, {row['pot']['cpu_s'] * 1e3:.0f} ms CPU; BLAS on one thread "
          f"{row['pot_blas_one_thread']['wall_s'] * 1e3:.0f} / {row['pot_blas_one_thread']['cpu_s'] * 1e3:.0f} ms | "
          f"load {row['load'][0]}", flush=True)
    sp = sorted(t['speedup_vs_pot'] for t in row['trials'])
    print(f"[{condition}] POT/ours over {len(sp)} interleaved trials: {sp[0]:.1f}x to {sp[-1]:.1f}x, median "
          f"{float(np.median(sp)):.1f}x", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='the same (it is one size): accepted for `make bench`')
    ap.add_argument('--hog', type=int, default=None, help='busy processes for the loaded condition (default: usable cores)')
    args = ap.parse_args(argv)
    hog = args.hog if args.hog is not None else len(os.sched_getaffinity(0))
    rows = [anatomy('quiet')]
    with Hog(hog) as h: rows.append(anatomy('loaded', h))
    write_results('sliced_anatomy', rows, packages=('torch', 'numpy', 'pot', 'geobook'), hog_processes=hog,
                  note='medians; CPU time is time.process_time of the whole process (all threads); the one-thread '
                       'projections and sorts are the work any project-and-sort method does at this size')


if __name__ == '__main__':
    main()
