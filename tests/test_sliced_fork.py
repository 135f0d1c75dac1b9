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


# ---- the BLAS limit of the fast path (d > 16): a parent thread inside a limited call while the process forks
def _child_blas(q):
    "In the child: the limit's lock was reset (a call does not deadlock), no user is left, BLAS threads restored."
    from threadpoolctl import threadpool_info
    state = (sliced._BLAS['users'], [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'])
    rng = np.random.default_rng(1)
    X, Y = torch.from_numpy(rng.standard_normal((4000, 32))), torch.from_numpy(rng.standard_normal((4000, 32)))
    th = sample_projections(32, 40, seed=1)
    q.put(state + (sliced_wasserstein(X, Y, projections=th).item(), sliced._BLAS['users']))


@pytest.mark.skipif(not hasattr(os, 'fork') or sys.platform == 'darwin', reason='needs the fork start method')
def test_fork_while_the_blas_limit_is_held():
    """The main thread is inside `_one_blas_thread` (BLAS limited) when it forks: the child must reset the count and
    restore the thread counts saved on entry, and its own call must complete and give the parent's value (d = 32 > 16
    takes the limited path)."""
    from threadpoolctl import threadpool_info
    if not sliced._blas_controller(): pytest.skip('no controllable BLAS in this process')
    before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']
    with sliced._one_blas_thread() as single:
        assert single and sliced._BLAS['users'] == 1
        ctx = mp.get_context('fork')
        q = ctx.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            p = ctx.Process(target=_child_blas, args=(q,)); p.start()
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill(); p.join()
            pytest.fail(f'the forked child hung for {TIMEOUT_S} s')
        users_at_start, threads_in_child, value, users_after = q.get(timeout=5)
    rng = np.random.default_rng(1)
    X, Y = torch.from_numpy(rng.standard_normal((4000, 32))), torch.from_numpy(rng.standard_normal((4000, 32)))
    assert (users_at_start, users_after) == (0, 0)
    assert threads_in_child == before                                 # restored to what the parent had saved
    assert value == sliced_wasserstein(X, Y, projections=sample_projections(32, 40, seed=1)).item()
    assert [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'] == before and sliced._BLAS['users'] == 0


def test_concurrent_calls_leave_blas_as_they_found_it():
    """Referee ch4g's case: six threads (and the main thread) calling the d > 16 path at once left OpenBLAS on one
    thread for good when the limit was shared across threads. Only the main thread may set and restore it now."""
    import threading
    from threadpoolctl import threadpool_info
    before = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']
    rng = np.random.default_rng(3)
    X, Y = torch.from_numpy(rng.standard_normal((400, 64))), torch.from_numpy(rng.standard_normal((400, 64)))
    ref = sliced_wasserstein(X, Y, n_projections=256, seed=0).item()
    out, gate = [], threading.Barrier(7)
    def work():
        gate.wait()
        for _ in range(5): out.append(sliced_wasserstein(X, Y, n_projections=256, seed=0).item())
    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts: t.start()
    work()
    for t in ts: t.join()
    assert len(out) == 35 and max(abs(v - ref) for v in out) <= 1e-12 * ref
    assert [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'] == before and sliced._BLAS['users'] == 0


def test_openmp_openblas_is_not_limited(monkeypatch):
    "An OpenMP build of OpenBLAS resets its count on every call (OpenBLAS issue 5806): the fallback (blocks) is used."
    class Lib:
        internal_api, threading_layer = 'openblas', 'openmp'
    class Ctl:
        def select(self, **kw): return type('S', (), {'lib_controllers': [Lib()]})()
    monkeypatch.setattr(sliced, 'ThreadpoolController', Ctl)
    monkeypatch.setitem(sliced._BLAS, 'ctl', None)
    assert sliced._blas_controller() is False
    with sliced._one_blas_thread() as single: assert single is False


def test_gradients_same_with_and_without_the_limit(monkeypatch):
    "The backward pass projects with one GEMM under the limit and in blocks without it: same gradients to 1e-13."
    rng = np.random.default_rng(2)
    X = torch.from_numpy(rng.standard_normal((3000, 40))).requires_grad_(True)
    Y = torch.from_numpy(rng.standard_normal((3000, 40)) + 0.2)
    th = sample_projections(40, 60, seed=2).requires_grad_(True)
    def grads():
        X.grad = th.grad = None
        sliced_wasserstein(X, Y, projections=th).backward()
        return X.grad.clone(), th.grad.clone()
    gx1, gt1 = grads()
    monkeypatch.setitem(sliced._BLAS, 'ctl', False)
    gx2, gt2 = grads()
    torch.testing.assert_close(gx1, gx2, rtol=0, atol=1e-13 * gx2.abs().max().item())
    torch.testing.assert_close(gt1, gt2, rtol=0, atol=1e-13 * gt2.abs().max().item())
