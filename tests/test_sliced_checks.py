"""The fast path's checks on the sorted rows (chapter 4, item 7) and its split call: inputs the scan used to catch are
caught on the sorted ends, without warnings, on both branches (one task split by cloud, several tasks); a failing cloud
task neither hangs nor hides its error."""
import threading
import warnings

import numpy as np
import pytest
import torch

from geobook import sliced
from geobook.sliced import sliced_wasserstein, sliced_costs, sample_projections

# (n, L): n·L = 5e5 takes the split call (one task, two clouds); 2e6 takes several tasks on the threads
SHAPES = [(10_000, 50), (20_000, 100)]


@pytest.mark.parametrize('n, L', SHAPES)
@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('where', ['X', 'Y', 'both'])
def test_non_finite_refused_without_warnings(n, L, bad, where):
    g = np.random.default_rng(0)
    X, Y = g.standard_normal((n, 40)), g.standard_normal((n, 40))
    if where in ('X', 'both'): X[n // 3, 5] = bad
    if where in ('Y', 'both'): Y[n // 2, 5] = bad
    th = sample_projections(40, L, seed=0, dtype=torch.float64)
    r, k = sliced._blocks(L, n, 40, sliced._balanced(L, sliced._auto_chunk(n, 40, 8)))
    assert (k == 1) == (n * L < 10**6)                     # both branches of the fast path are exercised
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(ValueError, match=f"`{'Y' if where == 'Y' else 'X'}` contains non-finite"):
            sliced_wasserstein(X, Y, projections=th)


@pytest.mark.parametrize('n, L', SHAPES)
def test_fast_path_equals_scanned_path(n, L):
    "Same inputs, scanned first (a zero in a direction forces the scan) or checked on the ends: the same distance."
    g = np.random.default_rng(1)
    X, Y = g.standard_normal((n, 40)), g.standard_normal((n, 40)) + 0.2
    th = sample_projections(40, L, seed=2, dtype=torch.float64)
    fast = sliced_wasserstein(X, Y, projections=th)
    Xs, Ys, _ = sliced._scanned(torch.from_numpy(X), torch.from_numpy(Y))
    scanned = sliced._power_mean(sliced._slice_distances(Xs, Ys, th, 2.0), 2.0)
    assert float(fast) == float(scanned)


@pytest.mark.parametrize('L', [1, 2, 3, 50, 51])
@pytest.mark.parametrize('p', [1.0, 2.0, 3.5])
def test_split_reduction_halves(L, p, monkeypatch):
    """The split call's two half reductions: the same bits whatever the number of threads (1 to 4), and equal to one
    reduction over all rows up to rounding (NumPy's einsum sums differently for different row counts: not bitwise)."""
    g = np.random.default_rng(3)
    X, Y = g.standard_normal((10_000, 64)), g.standard_normal((10_000, 64)) - 0.1
    T = sample_projections(64, L, seed=4, dtype=torch.float64).numpy()
    A, B = sliced._project(T, X, None, False), sliced._project(T, Y, None, False)
    A.sort(axis=1); B.sort(axis=1)
    got = {}
    for t in (1, 2, 3, 4):
        monkeypatch.setattr(sliced, '_n_threads', lambda t=t: t)
        monkeypatch.setattr(sliced, '_MIN_SPLIT', 0)
        got[t] = sliced._np_distances_split(T, X, Y, None, None, p, False)
    for t in (2, 3, 4): np.testing.assert_array_equal(got[t], got[1])
    np.testing.assert_allclose(got[1], sliced._np_row_lp(A - B, p), rtol=1e-13)


def test_failing_cloud_task_raises_and_does_not_hang(monkeypatch):
    "A cloud task that fails sets its event anyway: the reductions return and the cloud's error reaches the caller."
    real = sliced._project
    def boom(Tb, Z, ZT, single=False):
        if Z.shape[0] == 10_000 and Z[0, 0] == 7.0: raise MemoryError('cloud Y failed')
        return real(Tb, Z, ZT, single)
    monkeypatch.setattr(sliced, '_project', boom)
    g = np.random.default_rng(5)
    X, Y = g.standard_normal((10_000, 64)), g.standard_normal((10_000, 64)); Y[0, 0] = 7.0
    T = sample_projections(64, 50, seed=6, dtype=torch.float64).numpy()
    err = []
    def call():
        try: sliced._np_distances_split(T, X, Y, None, None, 2.0, False)
        except MemoryError as e: err.append(e)
    t = threading.Thread(target=call, daemon=True); t.start(); t.join(60)
    assert not t.is_alive() and len(err) == 1 and 'cloud Y failed' in str(err[0])


def test_float32_overflowing_projections_computed_in_float64():
    "float32 clouds whose projections overflow float32: the check fails, the scan raises the dtype, one rounding."
    g = np.random.default_rng(7)
    X = torch.tensor(g.standard_normal((3000, 6)) * 6e37, dtype=torch.float32)
    Y = torch.tensor(g.standard_normal((3000, 6)) * 6e37, dtype=torch.float32)
    th = sample_projections(6, 30, seed=8, dtype=torch.float32)
    got = sliced_wasserstein(X, Y, projections=th)
    want = sliced_wasserstein(X.double(), Y.double(), projections=th.double())
    assert got.dtype == torch.float32 and torch.isfinite(got) and got == want.float()
    costs = sliced_costs(X.double(), Y.double(), th.double())
    assert torch.allclose(sliced._power_mean(costs ** 0.5, 2.0), want, rtol=1e-12)


@pytest.mark.parametrize('n, L', SHAPES)
def test_float64_beyond_range_raises_without_warnings(n, L):
    "Coordinates up to 1e308: the projections overflow on the fast path (silently), the scan raises OverflowError."
    g = np.random.default_rng(9)
    X, Y = g.standard_normal((n, 40)), g.standard_normal((n, 40))
    X = X / np.abs(X).max() * 1e308
    th = sample_projections(40, L, seed=0, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(OverflowError, match='overflow'):
            sliced_wasserstein(X, Y, projections=th)


def test_half_precision_weights_within_their_rounding():
    "Weights rounded to bfloat16 from a normalised vector (sum off by up to ε/2) are accepted; a 2 % error is not."
    from geobook.sliced import wasserstein_1d
    g = np.random.default_rng(15)
    w = g.random(7); w /= w.sum()
    wb = torch.tensor(w).to(torch.bfloat16)
    off = abs(float(wb.double().sum()) - 1)
    assert 1e-3 < off <= torch.finfo(torch.bfloat16).eps / 2          # beyond the float32 tolerance, within rounding
    u, v = torch.tensor(g.standard_normal(7)), torch.tensor(g.standard_normal(5))
    got = wasserstein_1d(u, v, u_weights=wb)
    exact = wasserstein_1d(u, v, u_weights=wb.double() / wb.double().sum())
    assert abs(float(got) - float(exact)) < 1e-2 * float(exact)
    with pytest.raises(ValueError, match='must sum to 1'):
        wasserstein_1d(u, v, u_weights=(wb.double() * 1.02).to(torch.bfloat16))


HANG = """
import sys, threading, time, numpy as np
import geobook.sliced as s
s._n_threads = lambda: 3                       # three threads: one can take task 1 after task 0 failed
real = s._project
def project(Tb, Z, ZT, single=False):
    if Z is X: time.sleep(0.2); raise MemoryError('X failed')
    return real(Tb, Z, ZT, single)
s._project = project
def tracer(frame, event, arg):                 # the thread that takes task 1 pauses after taking it
    if frame.f_code.co_name == 'worker':
        def local(fr, ev, a):
            if ev == 'line' and fr.f_locals.get('i') == 1 and not getattr(local, 'done', False):
                local.done = True; time.sleep(0.5)
            return local
        return local
threading.settrace(tracer); sys.settrace(tracer)
g = np.random.default_rng(0)
X, Y = g.standard_normal((10_000, 3)), g.standard_normal((10_000, 3))
T = g.standard_normal((3, 50)); T /= np.linalg.norm(T, axis=0)
try: s._np_distances_split(T, X, Y, None, None, 2.0)
except MemoryError as e: print('raised:', e)
"""


def test_failing_cloud_with_three_threads_does_not_hang():
    "A referee's case: with three threads, a thread taking task 1 after task 0 failed must still run it (its event)."
    import subprocess, sys
    r = subprocess.run([sys.executable, '-c', HANG], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'raised: X failed' in r.stdout, (r.stdout, r.stderr)


def test_in_range_after_the_scan_is_not_refused():
    """A referee's case: coordinates at the scan's bound max/(4√d), directions aligned with them: the ends check fails,
    the scan accepts, and the distance is computed (it once raised the internal _OutOfRange)."""
    for dt in (torch.float64, torch.float32):
        d = 3
        lim = np.nextafter(torch.finfo(dt).max / (4 * np.sqrt(d)), 0)
        X = torch.full((4, d), lim, dtype=torch.float64).to(dt)
        Y = torch.zeros(4, d, dtype=dt)
        th = torch.full((d, 1), 1 / np.sqrt(d), dtype=torch.float64).to(dt)
        th = th / th.norm()
        got = sliced_wasserstein(X, Y, projections=th)
        want = sliced_wasserstein(X.double() / 2.0**100, Y.double(), projections=th.double()) * 2.0**100
        assert torch.isfinite(got) and abs(float(got) / float(want) - 1) < 1e-6
        assert torch.isfinite(sliced_costs(X.double() / 2.0**600, Y.double(), th.double())).all()
    g = np.random.default_rng(11)
    X = g.standard_normal((50, 3)); X = torch.tensor(X / np.abs(X).max() * np.nextafter(np.finfo(np.float64).max / (4 * np.sqrt(3)), 0))
    X[0] = float(X.abs().max())                                  # a point on the diagonal: the ascent finds its direction
    assert torch.isfinite(sliced.max_sliced_wasserstein(X, torch.zeros(50, 3, dtype=torch.float64), seed=0))


def test_overflowing_gradient_raises():
    """A referee's case: float64 coordinates past the scan's bound whose projections cancel are computed by the fast
    path; the θ-gradient overflows: OverflowError in the backward, no NumPy warning."""
    X = torch.tensor([[1.5e308, -1.5e308]], dtype=torch.float64)
    th = torch.tensor([[2 ** -0.5], [2 ** -0.5]], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        r = sliced_wasserstein(X, -X, projections=th)
        assert torch.isfinite(r)
        with pytest.raises(OverflowError, match='gradient with respect to the projections overflows'):
            r.backward()


def test_numpy_float16_weights_like_torch_float16():
    "A referee's case: float16 weights as a NumPy array get the same tolerance (ε₁₆/2) as a torch.float16 tensor."
    from geobook.sliced import wasserstein_1d
    g = np.random.default_rng(12)
    w = g.random(9); w /= w.sum()
    w16 = w.astype(np.float16)
    assert 1e-6 < abs(float(w16.astype(np.float64).sum()) - 1) <= np.finfo(np.float16).eps / 2   # beyond float64's 1e-6
    u, v = torch.tensor(g.standard_normal(9)), torch.tensor(g.standard_normal(4))
    assert float(wasserstein_1d(u, v, u_weights=w16)) == float(wasserstein_1d(u, v, u_weights=torch.from_numpy(w16)))
    with pytest.raises(ValueError, match='must sum to 1'):
        wasserstein_1d(u, v, u_weights=(w * 1.002).astype(np.float16))
