"""Property tests (hypothesis) for chapter 4: sliced Wasserstein is a metric, and its pieces agree with references.

With the directions held fixed, the estimator (1/L Σ_l W_p^p(θ_l♯μ, θ_l♯ν))^{1/p} is itself a pseudo-metric (an L^p
average of 1-D metrics), so symmetry, zero on identical clouds and the triangle inequality hold exactly, up to
floating-point rounding — no Monte Carlo slack is needed.
"""
import math
import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck

from geobook.sliced import sliced_wasserstein, sliced_costs, sample_projections, wasserstein_1d

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cloud(draw, d, min_n=1, max_n=30):
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(0.1, 10.0))
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.standard_normal((n, d)) * scale + rng.standard_normal(d))


@st.composite
def weights(draw, n):
    seed = draw(st.integers(0, 2**31 - 1))
    w = np.random.default_rng(seed).random(n) + 1e-3
    return torch.as_tensor(w / w.sum())


ps = st.sampled_from([1.0, 1.5, 2.0, 3.0])
dims = st.integers(1, 5)


@SETTINGS
@given(data=st.data(), d=dims, p=ps, seed=st.integers(0, 1000))
def test_symmetric_and_zero(data, d, p, seed):
    X, Y = data.draw(cloud(d)), data.draw(cloud(d))
    th = sample_projections(d, 16, seed=seed)
    xy = sliced_wasserstein(X, Y, p=p, projections=th).item()
    yx = sliced_wasserstein(Y, X, p=p, projections=th).item()
    assert math.isclose(xy, yx, rel_tol=1e-10, abs_tol=1e-12)
    assert sliced_wasserstein(X, X, p=p, projections=th).item() == 0.0
    assert xy >= 0


@SETTINGS
@given(data=st.data(), d=dims, p=ps, seed=st.integers(0, 1000))
def test_triangle_inequality(data, d, p, seed):
    X, Y, Z = data.draw(cloud(d)), data.draw(cloud(d)), data.draw(cloud(d))
    th = sample_projections(d, 16, seed=seed)
    sw = lambda A, B: sliced_wasserstein(A, B, p=p, projections=th).item()
    assert sw(X, Z) <= sw(X, Y) + sw(Y, Z) + 1e-9 * (1 + sw(X, Y) + sw(Y, Z))


@SETTINGS
@given(data=st.data(), d=dims, p=ps, seed=st.integers(0, 1000))
def test_weighted_unequal_matches_pot(data, d, p, seed):
    X, Y = data.draw(cloud(d)), data.draw(cloud(d))
    a, b = data.draw(weights(X.shape[0])), data.draw(weights(Y.shape[0]))
    th = sample_projections(d, 8, seed=seed)
    ours = sliced_wasserstein(X, Y, p=p, projections=th, a=a, b=b).item()
    ref = ot.sliced_wasserstein_distance(X.numpy(), Y.numpy(), a.numpy(), b.numpy(), p=p, projections=th.numpy())
    assert math.isclose(ours, ref, rel_tol=1e-8, abs_tol=1e-10)


@SETTINGS
@given(data=st.data(), p=ps)
def test_wasserstein_1d_matches_pot(data, p):
    X, Y = data.draw(cloud(1)), data.draw(cloud(1))
    a, b = data.draw(weights(X.shape[0])), data.draw(weights(Y.shape[0]))
    ours = wasserstein_1d(X[:, 0], Y[:, 0], a, b, p=p).item() ** p
    ref = ot.wasserstein_1d(X[:, 0].numpy(), Y[:, 0].numpy(), a.numpy(), b.numpy(), p=p)
    assert math.isclose(ours, ref, rel_tol=1e-8, abs_tol=1e-10)


@SETTINGS
@given(data=st.data(), d=dims, p=ps, seed=st.integers(0, 1000), chunk=st.integers(1, 9))
def test_fast_path_gradient_matches_torch_sort(data, d, p, seed, chunk):
    n = data.draw(st.integers(2, 25))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    X = torch.as_tensor(rng.standard_normal((n, d))).requires_grad_()
    Y = torch.as_tensor(rng.standard_normal((n, d)) + 0.3).requires_grad_()
    th = sample_projections(d, 9, seed=seed).requires_grad_()
    ours = sliced_costs(X, Y, th, p=p, chunk_size=chunk).sum()
    ref = (torch.sort(X @ th, 0).values - torch.sort(Y @ th, 0).values).abs().pow(p).mean(0).sum()
    g1, g2 = torch.autograd.grad(ours, (X, Y, th)), torch.autograd.grad(ref, (X, Y, th))
    assert math.isclose(ours.item(), ref.item(), rel_tol=1e-10, abs_tol=1e-12)
    for u, v in zip(g1, g2): torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)


@SETTINGS
@given(data=st.data(), d=dims, seed=st.integers(0, 1000))
def test_sliced_at_most_wasserstein(data, d, seed):
    "SW_2 <= W_2 for every set of directions (each slice cost is at most the full cost)."
    X, Y = data.draw(cloud(d, max_n=15)), data.draw(cloud(d, max_n=15))
    a, b = np.full(len(X), 1 / len(X)), np.full(len(Y), 1 / len(Y))
    w2 = math.sqrt(max(ot.emd2(a, b, ot.dist(X.numpy(), Y.numpy())), 0.0))
    assert sliced_wasserstein(X, Y, n_projections=16, seed=seed).item() <= w2 * (1 + 1e-9) + 1e-9
