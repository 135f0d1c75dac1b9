"""Chapter 4's thread pool after fork(): a child forked by multiprocessing, after the parent has used the pool, must
compute the same value as the parent instead of hanging on the parent's (absent) threads. The child runs under a
timeout, so a hang fails the test instead of blocking the run."""
import multiprocessing as mp
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from geobook import sliced
from geobook.sliced import sliced_wasserstein, sample_projections

TIMEOUT_S = 120
N, D, L = 40_000, 3, 64          # 40 000 × 64 numbers per cloud: well above the size that uses the pool


def _clouds():
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((N, D)), rng.standard_normal((N, D)) + 0.5
    return torch.from_numpy(X), torch.from_numpy(Y), sample_projections(D, L, seed=0)


def _child(q):
    X, Y, th = _clouds()
    q.put((os.getpid(), sliced._POOL is None, sliced_wasserstein(X, Y, projections=th).item(), sliced._POOL_PID))


@pytest.mark.skipif(not hasattr(os, 'fork') or sys.platform == 'darwin', reason='needs the fork start method')
def test_forked_child_computes_instead_of_hanging():
    X, Y, th = _clouds()
    parent_value = sliced_wasserstein(X, Y, projections=th).item()     # the parent starts its pool
    if sliced._n_threads() > 1: assert sliced._POOL is not None and sliced._POOL_PID == os.getpid()
    ctx = mp.get_context('fork')
    q = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)        # Python 3.12+ warns about fork() with threads
        p = ctx.Process(target=_child, args=(q,))
        p.start()
    p.join(TIMEOUT_S)
    if p.is_alive():
        p.kill(); p.join()
        pytest.fail(f'the forked child hung for {TIMEOUT_S} s in sliced_wasserstein (thread pool inherited from the parent)')
    assert p.exitcode == 0
    pid, pool_dropped, value, pool_pid = q.get(timeout=5)
    assert pid != os.getpid()
    assert pool_dropped                                              # os.register_at_fork dropped the parent's pool
    assert pool_pid in (None, pid)                                   # the child made its own (or needed none)
    assert value == parent_value


def test_pool_is_sized_from_the_affinity():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    assert sliced._n_threads() == max(1, min(expected, 16))
