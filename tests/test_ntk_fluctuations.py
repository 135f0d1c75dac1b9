"""Chapter 1 (geobook.ntk): the finite-width NTK variance at ReLU criticality against its leading-order formula.

The chapter derives Var Θ̂(x,x)/Θ(x,x)² = c(L)·L/n + O(L²/n²) with c(L) = (11L+7)/(3(L+1)) (C_W = 2, C_b = 0, one input).
Here a seeded Monte Carlo of 8000 networks per point, at L/n = 1/128 (where the next order is a few s.e. at most), checks
c(L) at depths 2 and 8, and the exact 3/n at depth 1, within four standard errors (delta method). The networks are sampled
exactly in distribution by the rank-one split W^{l+1} = g ĥᵀ + W P⊥ (O(nL) random numbers each); the split sampler is
checked here against dense networks whose NTK comes from `empirical_ntk`.
"""
from __future__ import annotations
import math
import numpy as np
import pytest
import torch
from geobook.ntk import MLP, empirical_ntk

DT = torch.float64


def c_theory(L): return (11 * L + 7) / (3 * (L + 1))


def split_sample(width, depth, n, seed, q=2.0, chunk=2**20):
    """(K̂, Θ̂) (2, n) at one input with K¹ = q: forward noise g^l ~ N(0, I), κ_l = q ∏ (2/n)‖relu g^k‖²; backward
    δ^l = √(2/n)(ĥ^l (g^{l+1}·δ^{l+1}) + ‖δ^{l+1}‖ P⊥ζ) ⊙ 1{g^l > 0}; Θ̂ = Σ_l κ_{l-1}‖δ^l‖² + κ_L."""
    gen, out = torch.Generator().manual_seed(seed), []
    b = max(1, chunk // (width * depth))
    for s in range(0, n, b):
        B = min(b, n - s)
        g = torch.randn(depth, B, width, generator=gen, dtype=DT)
        h = torch.relu(g); h2 = (h * h).sum(2); hh = h / h2.sqrt().clamp_min(1e-300)[..., None]   # all-dead layer: ĥ = 0
        kap = torch.cat([torch.full((1, B), q, dtype=DT), q * torch.cumprod(2 * h2 / width, 0)])
        g_up, d, th = torch.randn(B, 1, generator=gen, dtype=DT), torch.ones(B, 1, dtype=DT), kap[depth].clone()
        for l in range(depth, 0, -1):
            a, dn = (g_up * d).sum(1, keepdim=True), d.norm(dim=1, keepdim=True)
            z = torch.randn(B, width, generator=gen, dtype=DT)
            z = z - hh[l - 1] * (hh[l - 1] * z).sum(1, keepdim=True)
            d = math.sqrt(2 / width) * (hh[l - 1] * a + dn * z) * (g[l - 1] > 0)
            th, g_up = th + kap[l - 1] * (d * d).sum(1), g[l - 1]
        out.append(torch.stack([kap[depth], th]))
    return torch.cat(out, 1)


def rel_var(v):
    """Var v/(𝔼v)² and its standard error by the delta method from the sample's moments μ_p = 𝔼xᵖ, x = v/v̄:
    √((μ₄ − μ₂² − 4μ₂(μ₃ − μ₂) + 4μ₂²(μ₂ − 1))/N), as derived in the chapter (batch means understate it in heavy tails)."""
    x = v / v.mean()
    m2, m3, m4 = ((x**p).mean().item() for p in (2, 3, 4))
    return (v.var() / v.mean()**2).item(), math.sqrt(max(m4 - m2**2 - 4 * m2 * (m3 - m2) + 4 * m2**2 * (m2 - 1), 0.0) / len(v))


def test_split_sampler_matches_dense_networks():
    x = torch.ones(1, 4, dtype=DT)                                   # |x|² = n₀: K¹ = 2
    dense = torch.tensor([[MLP(4, 12, 2, seed=s, dtype=DT).empirical_nngp(x).item(),
                           empirical_ntk(MLP(4, 12, 2, seed=s, dtype=DT), x).item()] for s in range(1500)], dtype=DT).T
    split = split_sample(12, 2, 6000, seed=3)
    for row in (0, 1):
        (vd, sd), (vs, ss) = rel_var(dense[row]), rel_var(split[row])
        assert abs(vd - vs) < 4 * math.hypot(sd, ss), (row, vd, sd, vs, ss)
        assert abs(dense[row].mean() - split[row].mean()) < 4 * math.sqrt(vd / 1500 + vs / 6000) * split[row].mean()


@pytest.mark.parametrize('L,width', [(1, 128), (2, 256), (8, 1024)])
def test_ntk_variance_prefactor(L, width):
    K, T = split_sample(width, L, 8000, seed=100 + L)
    v, se = rel_var(T)
    c, c_se = v * width / L, se * width / L
    assert abs(c - c_theory(L)) < 4 * c_se, (L, width, c, c_se, c_theory(L))
    vk, sek = rel_var(K)                                             # and the exact NNGP variance (1 + 5/n)^L − 1
    assert abs(vk - ((1 + 5 / width)**L - 1)) < 4 * sek
    assert abs(T.mean().item() / (2 * (L + 1)) - 1) < 4 * math.sqrt(v / 8000)


def test_prefactor_values():
    assert c_theory(1) == 3 and abs(c_theory(10**9) - 11 / 3) < 1e-8
    assert all(c_theory(L + 1) > c_theory(L) for L in range(1, 64))
