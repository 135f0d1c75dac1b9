"""A point's projection does not depend on where it sits in its cloud (chapter 4, "Ties in the merge"): for d <= 16 the
torch paths project by d multiply-adds in a fixed order (`_lines`), so a cloud and its duplicate are at distance
exactly 0. Found on an AVX-512 machine (OpenBLAS SkylakeX kernels), where `θᵀ Xᵀ` by a matrix product rounded a point
and its copy an ulp apart and SW(X, [X; X]) came out 2e-17 to 5e-16 instead of 0."""
import numpy as np
import pytest
import torch

from geobook import sliced
from geobook.sliced import sliced_wasserstein, sliced_costs, sliced_plan, sample_projections

F64 = torch.float64


def _cloud(n, d, seed, dtype=F64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize('d', [1, 2, 3, 5, 8, 9, 16])
@pytest.mark.parametrize('n', [7, 10, 33, 257])
@pytest.mark.parametrize('dtype', [torch.float32, F64])
def test_lines_do_not_depend_on_position(d, n, dtype):
    X = _cloud(n, d, seed=n + d, dtype=dtype)
    T = sample_projections(d, 37, seed=d, dtype=dtype)
    P1, P3 = sliced._lines(T, X), sliced._lines(T, torch.cat([X, X.flip(0), X]))
    for k, block in enumerate(P3.split(n, 1)):
        assert torch.equal(block, P1 if k != 1 else P1.flip(1))              # bitwise, in every position
    eps = torch.finfo(dtype).eps
    ref = T.double().T @ X.double().T                                          # the same numbers up to rounding
    assert (P1.double() - ref).abs().max() <= 4 * d * eps * (X.abs().max() + 1e-300)


@pytest.mark.parametrize('d', [2, 3, 8, 16])
@pytest.mark.parametrize('p', [1, 2, 10, 50, 300])
def test_duplicated_cloud_at_distance_exactly_zero(d, p):
    X = _cloud(21, d, seed=d)
    w = torch.rand(21, generator=torch.Generator().manual_seed(p), dtype=F64); w /= w.sum()
    th = sample_projections(d, 40, seed=p)
    XX, XXX = torch.cat([X, X]), torch.cat([X, X.flip(0), X])
    assert sliced_wasserstein(X, XX, p=p, projections=th).item() == 0.0
    assert sliced_wasserstein(X, XXX, p=p, projections=th).item() == 0.0
    assert sliced_wasserstein(X, XX, p=p, projections=th, a=w, b=torch.cat([w, w]) / 2).item() == 0.0
    assert sliced_costs(X, XXX, th, p=p).abs().max().item() == 0.0
    for kind in ('expected', 'min'):
        assert sliced_plan(X, XX, p=p, projections=th, kind=kind).cost.item() == 0.0


@pytest.mark.parametrize('d', [3, 16])
def test_duplicated_cloud_zero_with_gradients(d):
    "The autograd path projects the same way: distance 0 and a zero gradient (the cloud is its duplicate's minimiser)."
    X = _cloud(15, d, seed=3).requires_grad_(True)
    Y = torch.cat([X.detach(), X.detach()])
    sw = sliced_wasserstein(X, Y, projections=sample_projections(d, 30, seed=1))
    sw.backward()
    assert sw.item() == 0.0 and torch.equal(X.grad, torch.zeros_like(X))


def test_above_sixteen_dimensions_within_rounding():
    "d > 16 projects by one matrix product: a point and its copy may differ by an ulp, the distance by ulps of the spread."
    X = _cloud(33, 24, seed=5)
    th = sample_projections(24, 40, seed=0)
    spread = (X @ th).abs().max().item()
    for p in (1, 2, 50, 300):
        assert 0.0 <= sliced_wasserstein(X, torch.cat([X, X]), p=p, projections=th).item() <= 8 * 2.0 ** -52 * spread


@pytest.mark.parametrize('d', [3, 9, 16, 64])
def test_fast_path_permutation_within_rounding(d):
    "Equal sizes keep BLAS blocks: a cloud and its permutation are 0 or a few ulps of the spread apart, never more."
    g = torch.Generator().manual_seed(d)
    for n in (33, 1000):
        X = torch.randn(n, d, generator=g, dtype=F64)
        th = sample_projections(d, 50, seed=0)
        spread = (X @ th).abs().max().item()
        sw = sliced_wasserstein(X, X[torch.randperm(n, generator=g)], projections=th).item()
        assert 0.0 <= sw <= 8 * 2.0 ** -52 * spread


@pytest.mark.parametrize('d', [2, 3, 8, 16])
def test_sphere_duplicate_exactly_zero(d):
    "The spherical distance projects on great circles by `_lines` too: a cloud and its duplicate at exactly 0."
    from geobook.sliced import sliced_wasserstein_sphere
    X = _cloud(25, d, seed=d)
    X = X / X.norm(dim=1, keepdim=True)
    for p in (1, 2, 50):
        assert sliced_wasserstein_sphere(X, torch.cat([X, X.flip(0)]), p=p, n_projections=20, seed=0).item() == 0.0
