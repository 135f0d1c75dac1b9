"Fifth referee's findings on chapter 4 (sliced Wasserstein), each re-run as a test (float64 unless the case is about dtype)."
import json
import math
import warnings
from pathlib import Path
import numpy as np
import ot
import pytest
import torch
import geobook.sliced as sl
from geobook.sliced import (sliced_barycenter, wasserstein_1d, pac_sliced_bound, distributional_sliced_wasserstein,
                            augmented_sliced_wasserstein, generalized_sliced_wasserstein)

F64 = torch.float64


# ---- W1. the barycenter step is stable for every L and d
def _two_gaussians(d, n=400, seed=1):
    "N(0, I) and N(3·1, 4I) in R^d: the sliced (and Wasserstein) barycenter with equal weights is N(1.5·1, 1.5² I)."
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    return X, 3 + 2 * torch.randn(n, d, generator=g, dtype=F64)


@pytest.mark.parametrize('d,L,n_iters', [(50, 2, 1000), (50, 8, 300), (10, 1, 1000), (20, 4, 300)])
def test_barycenter_default_lr_converges_for_few_directions(d, L, n_iters):
    """The referee's divergent cases at lr = 1 (d = 50, L = 2 returned points of size 4e12; L = 8 a std of 3.15). The
    reference is the closed form on the samples themselves, Σ_k w_k ŝ_k per coordinate (averaged over coordinates),
    and the mean Σ_k w_k m̂_k. Tolerance 3 %: the support's own sample std of N = 256 points has relative SE
    1/√(2N) = 4.4 % per coordinate, 0.6 % averaged over ≥ 10 roughly independent coordinates (seed 0)."""
    X, Y = _two_gaussians(d)
    Z = sliced_barycenter([X, Y], n_support=256, n_projections=L, n_iters=n_iters, seed=0, show_progress=False)
    s_ref = float((X.std(0) + Y.std(0)).mean() / 2)
    m_ref = float((X.mean() + Y.mean()) / 2)
    assert abs(s_ref - 1.5) < 0.03
    assert float(Z.std(0).mean()) == pytest.approx(s_ref, rel=0.03)
    assert float(Z.mean()) == pytest.approx(m_ref, abs=0.05)


def test_barycenter_orthonormal_blocks():
    "The step's directions: unit columns, orthonormal within a block, λ_max(ΘΘᵀ) = ⌈L/d⌉ (what the step divides by)."
    g = torch.Generator().manual_seed(0)
    for d, L in [(2, 64), (50, 2), (3, 7), (5, 5), (1, 4)]:
        th = sl._orthonormal_blocks(d, L, g, F64, None)
        assert th.shape == (d, L)
        torch.testing.assert_close(th.norm(dim=0), torch.ones(L, dtype=F64), rtol=0, atol=1e-14)
        k = min(d, L)
        torch.testing.assert_close(th[:, :k].T @ th[:, :k], torch.eye(k, dtype=F64), rtol=0, atol=1e-14)
        assert float(torch.linalg.eigvalsh(th @ th.T).max()) == pytest.approx(-(-L // d), rel=1e-12)


@pytest.mark.parametrize('d,L,lr', [(50, 2, 1.0), (50, 2, 2.0), (2, 64, 2.0), (3, 7, 1.5), (20, 4, 1.0)])
def test_barycenter_step_never_increases_the_sampled_objective(monkeypatch, d, L, lr):
    """The normalised step is gradient descent with step (η/λ)(N L/2) on F_Θ, whose Hessian in each z_i is
    (2/(N L))ΘΘᵀ ⪯ (2λ/(N L))I: for η ≤ 2 it cannot increase F_Θ, and re-sorting only lowers it. The first step's Θ
    and Z are captured (seeds 0–2); F_Θ after the step ≤ F_Θ before, to 1e-12 relative, with unequal cloud sizes."""
    X, Y = _two_gaussians(d, n=60)
    Y = Y[:45]
    seen = []
    real = sl._slice_distances
    def spy(Z, C, th, p, *a):
        if len(seen) < 2: seen.append((Z.detach().clone(), C, th))
        return real(Z, C, th, p, *a)
    monkeypatch.setattr(sl, '_slice_distances', spy)
    for seed in range(3):
        seen.clear()
        Z1 = sliced_barycenter([X, Y], n_support=30, n_projections=L, n_iters=1, lr=lr, seed=seed, show_progress=False)
        (Z0, Xs, th), (_, Ys, _) = seen
        sc = float(X.abs().max() / Xs.abs().max())                 # the function works at a power-of-two scale
        F = lambda Z: sum(0.5 * real(Z, C, th, 2.0).pow(2).mean() for C in (Xs, Ys))
        assert float(F(Z1 / sc)) <= float(F(Z0)) * (1 + 1e-12)


def test_unnormalised_step_mean_square_factor():
    """The derivation behind W1: P = (d/L) Σ_l θ_l θ_lᵀ with i.i.d. uniform θ_l has E P² = (d + L − 1)/L · I, so the old
    step e ← (I − ηP)e grows in mean square by 1 − 2η + η²(d + L − 1)/L per step. Monte Carlo with 40 000 draws
    (seed 0) at d = 50, L = 2: trace(E P²)/d within 2 % of 25.5."""
    d, L, R = 50, 2, 40_000
    g = torch.Generator().manual_seed(0)
    th = torch.randn(R, d, L, generator=g, dtype=F64)
    th = th / th.norm(dim=1, keepdim=True)
    # E P² = (d/L)² E[Σ_l Σ_k θ_l θ_lᵀ θ_k θ_kᵀ]; trace of θ_l θ_lᵀ θ_k θ_kᵀ = ⟨θ_l, θ_k⟩²
    G = th.transpose(1, 2) @ th                                          # (R, L, L) Gram matrices
    tr = (d / L) ** 2 * (G ** 2).sum((1, 2)).mean() / d
    assert float(tr) == pytest.approx((d + L - 1) / L, rel=0.02)


# ---- W5. the float64 quantile merge keeps real tiny atoms
def test_tiny_atom_next_to_a_shared_level_is_kept():
    "n = 1e5 zeros with weights (1 − 1e-10)/(n − 1), one atom at 1e6 with weight 1e-10, against 1e5 zeros: W₁ = 1e-4 (was 0)."
    n = 100_000
    u = torch.zeros(n, dtype=F64); u[-1] = 1e6
    w = torch.full((n,), (1 - 1e-10) / (n - 1), dtype=F64); w[-1] = 1e-10
    v = torch.zeros(n, dtype=F64)
    got = float(wasserstein_1d(u, v, w, None, p=1))
    pot = float(ot.wasserstein_1d(u.numpy(), v.numpy(), w.numpy(), None, p=1))
    assert got == pytest.approx(1e-4, rel=1e-6)            # exact value; the weights' own rounding is ~1e-8 relative
    assert got == pytest.approx(pot, rel=1e-12)


@pytest.mark.parametrize('e', [1e-9, 1e-12, 1e-14, 1e-15])
def test_tiny_atom_of_one_measure_is_kept(e):
    """u = {0, 1000} with weights (1 − e, e) against δ₀: W₂ = 1000·√e, and equal to POT's to 1e-12 (it was 0 at e = 1e-15).
    The mass e is the difference of two cumulative levels near 1, each rounded by ≤ ε = 2.2e-16: relative error ≤ ε/e
    on e, ε/(2e) on W₂; the test allows ε/e."""
    u, v = torch.tensor([0.0, 1000.0], dtype=F64), torch.zeros(1, dtype=F64)
    w = torch.tensor([1 - e, e], dtype=F64)
    got = float(wasserstein_1d(u, v, w, None, p=2))
    assert got > 0
    assert got == pytest.approx(1000 * math.sqrt(e), rel=max(1e-12, torch.finfo(F64).eps / e))
    assert got == pytest.approx(float(ot.wasserstein_1d(u.numpy(), v.numpy(), w.numpy(), None, p=2)) ** 0.5, rel=1e-12)
    # the same with the roles of the measures swapped (the snapped levels are the second measure's)
    assert float(wasserstein_1d(v, u, None, w, p=2)) == pytest.approx(got, rel=1e-12)


def _w1_longdouble(u, v, a, b):
    "W₁ = ∫|F_u − F_v| dx over the merged sorted atoms, in NumPy's long double (an independent reference)."
    ld = np.longdouble
    a, b = a.astype(ld) / a.astype(ld).sum(), b.astype(ld) / b.astype(ld).sum()
    x = np.concatenate([u, v]).astype(ld); w = np.concatenate([a, -b])
    o = np.argsort(x, kind='stable')
    return float(np.sum(np.abs(np.cumsum(w[o])[:-1]) * np.diff(x[o])))


@pytest.mark.parametrize('wt', [1e-8, 1e-10, 1e-12])
def test_small_outlier_against_long_double(wt):
    """An atom at 50 with weight wt in n = 1e5 normal atoms against 1e5 normal atoms (seed 1): W₁ equals a long-double
    evaluation of ∫|F_u − F_v| to 1e-11 relative (the atom's own share is ~5e-9 relative at wt = 1e-12; the float64
    merge lost 1.2e-6 relative at wt = 1e-10 before the levels were compensated sums and only mutual-nearest levels
    of different measures were merged)."""
    rng = np.random.default_rng(1)
    n = 100_000
    u = rng.normal(size=n); u[0] = 50.0
    a = np.full(n, (1 - wt) / (n - 1)); a[0] = wt
    v = rng.normal(size=n)
    got = float(wasserstein_1d(torch.tensor(u), torch.tensor(v), torch.tensor(a), None, p=1))
    without = float(wasserstein_1d(torch.tensor(u[1:]), torch.tensor(v), torch.tensor(a[1:] / a[1:].sum()), None, p=1))
    ref = _w1_longdouble(u, v, a, np.ones(n))
    assert got == pytest.approx(ref, rel=1e-11)
    assert abs(got - without) > 0.5 * wt * (50 - v.max())    # the atom's mass is not merged away


def test_rounding_ties_are_still_exact():
    "The snap still removes rounding slivers: SW(X, [X; X]) with weights (w, [w; w]/2) is exactly 0 up to p = 300."
    g = torch.Generator().manual_seed(4)
    X = torch.randn(50, 3, generator=g, dtype=F64)
    w = torch.rand(50, generator=g, dtype=F64); w /= w.sum()
    for p in (1, 2, 50, 300):
        assert float(sl.sliced_wasserstein(X, torch.cat([X, X]), p=p, a=w, b=torch.cat([w, w]) / 2, seed=0)) == 0.0


# ---- W6. the PAC diameter tolerance follows the coordinates' size
def _sphere(centre, d=3, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=g, dtype=F64)
    Z = 0.5 * Z / Z.norm(dim=1, keepdim=True) + centre      # radius 0.5: the population's diameter is 1
    return Z[: n // 2], Z[n // 2:]


def test_pac_diameter_float32_far_from_origin():
    """Points on a sphere of radius 0.5 centred at (1e4, 1e4, 1e4): rounded to float32 their largest distance is ≈1.0009,
    and the true Δ = 1 was refused. It is accepted now; a Δ below the stored distance by more than the rounding
    allowance 2ε(√d·max|z| + Δ) (4.2e-3 here) is refused."""
    X, Y = _sphere(1e4)
    Xf, Yf = X.float(), Y.float()
    Z = torch.cat([Xf, Yf]).double()
    stored = float(torch.cdist(Z, Z).max())
    assert stored > 1.0005
    mu = torch.tensor([1.0, 0.0, 0.0])
    assert math.isfinite(float(pac_sliced_bound(Xf, Yf, mu, 1.0, 1.0, p=1, n_projections=10, seed=0).bound))
    allow = 2 * torch.finfo(torch.float32).eps * (math.sqrt(3) * float(Z.abs().max()) + 1.0)
    with pytest.raises(ValueError, match='`diameter`'):
        pac_sliced_bound(Xf, Yf, mu, 1.0, stored - 1.5 * allow, p=1, n_projections=10, seed=0)


def test_pac_diameter_float16_allowance_is_the_rounding():
    """float16 points on the sphere of radius 0.5 at the origin: a Δ below the stored distance by 1.5 times the rounding
    allowance 2ε(√d·max|z| + Δ) (0.55 % here) is refused (0.7 % below was accepted before, for any data); the true
    population diameter 1 is accepted."""
    X, Y = _sphere(0.0, seed=3)
    Xh, Yh = X.half(), Y.half()
    Z = torch.cat([Xh, Yh]).double()
    stored = float(torch.cdist(Z, Z).max())
    allow = 2 * float(torch.finfo(torch.float16).eps) * (math.sqrt(3) * float(Z.abs().max()) + stored)
    mu = torch.tensor([1.0, 0.0, 0.0])
    pac_sliced_bound(Xh, Yh, mu, 1.0, 1.0, p=1, n_projections=10, seed=0)           # the population's diameter
    with pytest.raises(ValueError, match='`diameter`'):
        pac_sliced_bound(Xh, Yh, mu, 1.0, stored - 1.5 * allow, p=1, n_projections=10, seed=0)
    assert 1.5 * allow < 0.007 * stored                  # the old relative 8ε (0.78 %) accepted 0.7 % below


# ---- W7, W8, W9. named errors, no warnings
@pytest.mark.parametrize('fn', [distributional_sliced_wasserstein, augmented_sliced_wasserstein])
def test_float32_huge_lr_is_refused_by_name(fn):
    "lr = 1e38 in float32: Adam's first step 10·lr overflows; an OverflowError naming `lr` (was a torch RuntimeError)."
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(30, 3, generator=g), torch.randn(20, 3, generator=g) + 1
    with pytest.raises(OverflowError, match='`lr`'):
        fn(X, Y, lr=1e38, n_iters=2, seed=0)
    with pytest.raises(OverflowError, match='`lr`'):
        fn(X.double(), Y.double(), lr=1.7e308, n_iters=2, seed=0)


def test_poly_gsw_differentiable_call_emits_no_warning():
    "`float(g)` on a tensor that requires grad warned on every differentiable GSW-poly call; with warnings as errors none."
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=F64).requires_grad_(True)
    Y = torch.randn(15, 3, generator=g, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        v = generalized_sliced_wasserstein(X, Y, kind='poly', degree=3, seed=0)
        v.backward()
    assert torch.isfinite(X.grad).all()


def test_pac_float32_tiny_diameter_says_underflow():
    "Δ = 1e-30 with float32 samples: Δ^p = 1e-60 underflows float32; the message says underflow (it said overflow)."
    with pytest.raises(OverflowError, match='`diameter`.*underflows torch.float32'):
        pac_sliced_bound(torch.zeros(5, 3), torch.zeros(5, 3), torch.tensor([1.0, 0.0, 0.0]), 1.0, diameter=1e-30)


# ---- W2. the benchmark's goal flag: a row compared with nothing is not a met goal
def test_bench_meets_goal_is_null_without_any_comparison():
    "In benchmarks/results/sliced.json a row with neither POT nor the naive sort measured has meets_goal null."
    path = Path(__file__).resolve().parents[1] / 'benchmarks' / 'results' / 'sliced.json'
    rows = json.loads(path.read_text())['rows']
    bare = [r for r in rows if r.get('speedup_vs_pot') is None and r.get('ratio_vs_naive') is None]
    assert all(r['meets_goal'] is None for r in bare)
    assert all(isinstance(r['meets_goal'], bool) for r in rows if r not in bare)


def test_bench_goal_function():
    "bench_sliced.meets_goal: None with no ratio, else both measured ratios against the goals."
    import importlib.util
    path = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_sliced.py'
    spec = importlib.util.spec_from_file_location('bench_sliced', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert mod.meets_goal({}) is None
    assert mod.meets_goal({'speedup_vs_pot': 20.0}) is True
    assert mod.meets_goal({'speedup_vs_pot': 20.0, 'ratio_vs_naive': 1.2}) is False
    assert mod.meets_goal({'ratio_vs_naive': 0.5}) is True
    assert mod.meets_goal({'speedup_vs_pot': 10.0, 'ratio_vs_naive': 0.5}) is False
