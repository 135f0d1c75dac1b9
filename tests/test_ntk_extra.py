"""Chapter 1 (geobook.ntk): leaky ReLU's closed-form moments, checked against independent computations.

- mpmath: the outer Gaussian integral by adaptive quadrature (split at the kink), the inner one in closed form
  (𝔼[max(v, a v) | u] for v | u Gaussian), at 30 digits: agreement to 1e-13 of the scale √(𝔼σ(u)² 𝔼σ(v)²);
- the limits a = 0 (ReLU) and a = 1 (identity), bit for bit;
- seeded Monte Carlo over (u, v) and over finite networks (`MLP` with `LeakyReLU`), within four standard errors;
- chapter 2's `kernel_flow` with its own `leaky_relu`, and neural-tangents' `stax.LeakyRelu` where a Python with
  neural-tangents is available (GEOBOOK_NT_PYTHON, or the repository's `.venv-nt`; skipped otherwise).
"""
from __future__ import annotations
import json, math, os, subprocess, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
import mpmath
from geobook.ntk import (LeakyReLU, leaky_relu_moments, relu_moments, linear_moments, nngp_ntk, quadrature_moments,
                         activation_fns, MLP)

ROOT = Path(__file__).resolve().parents[1]
DT = torch.float64
SLOPES = [0.0, 0.01, 0.2, 0.5, 0.9, 1.0]


def mp_leaky_moments(k11, k12, k22, a, dps=30):
    """(𝔼σ(u)σ(v), 𝔼σ'(u)σ'(v)) for σ = max(z, a z) by mpmath: u = √k11 ξ with ξ ~ N(0, 1) outside (quad, split at 0),
    v | u ~ N(c u, s²) with c = k12/k11, s² = k22 − k12²/k11 inside, in closed form:
    𝔼[σ(v) | u] = a μ + (1 − a)(μ Φ(μ/s) + s φ(μ/s)) and 𝔼[σ'(v) | u] = a + (1 − a) Φ(μ/s), μ = c u."""
    with mpmath.workdps(dps):
        k11, k12, k22, a = (mpmath.mpf(x) for x in (k11, k12, k22, a))
        c, s2 = k12 / k11, k22 - k12**2 / k11
        s = mpmath.sqrt(max(s2, mpmath.mpf(0)))
        sig = lambda z: z if z > 0 else a * z
        dsig = lambda z: mpmath.mpf(1) if z > 0 else a
        def inner(mu):
            if s == 0: return sig(mu), dsig(mu)
            t = mu / s
            return a * mu + (1 - a) * (mu * mpmath.ncdf(t) + s * mpmath.npdf(t)), a + (1 - a) * mpmath.ncdf(t)
        r = mpmath.sqrt(k11)
        S = mpmath.quad(lambda x: sig(r * x) * inner(c * r * x)[0] * mpmath.npdf(x), [-mpmath.inf, 0, mpmath.inf])
        Sd = mpmath.quad(lambda x: dsig(r * x) * inner(c * r * x)[1] * mpmath.npdf(x), [-mpmath.inf, 0, mpmath.inf])
        return float(S), float(Sd)


COVS = [(1.0, 0.5, 1.0), (2.0, -0.9, 0.7), (0.5, 0.2, 3.0), (1.0, 0.999, 1.0), (1.0, -0.999, 1.0), (4.0, -3.0, 9.0),
        (1e6, 3e5, 2e6), (1e-6, -5e-7, 3e-6), (0.3, 0.0, 0.8)]


@pytest.mark.parametrize('a', SLOPES)
def test_leaky_relu_against_mpmath(a):
    for k11, k12, k22 in COVS:
        S, Sd = leaky_relu_moments(k11, k12, k22, a)
        ref, ref_d = mp_leaky_moments(k11, k12, k22, a)
        scale = math.sqrt(k11 * k22) * (1 + a * a) / 2
        assert abs(S.item() - ref) <= 1e-13 * scale, (k11, k12, k22, a, S.item(), ref)
        assert abs(Sd.item() - ref_d) <= 1e-13, (k11, k12, k22, a, Sd.item(), ref_d)


def test_leaky_relu_limits_are_relu_and_identity_exactly():
    gen = torch.Generator().manual_seed(101)
    for dtype in (torch.float32, torch.float64):
        A = torch.randn(200, 2, 2, generator=gen, dtype=dtype)
        K = A @ A.transpose(-1, -2)
        k = K[:, 0, 0], K[:, 0, 1], K[:, 1, 1]
        for i in (0, 1):
            assert torch.equal(leaky_relu_moments(*k, 0.0)[i], relu_moments(*k)[i])
            assert torch.equal(leaky_relu_moments(*k, 1.0)[i], linear_moments(*k)[i])
            assert leaky_relu_moments(*k, 0.3)[i].dtype == dtype
    x = torch.randn(5, 3, generator=gen, dtype=DT)
    for a, name in ((0.0, 'relu'), (1.0, 'linear')):
        for x2 in (None, x[:2]):
            for got, want in zip(nngp_ntk(x, x2, 3, LeakyReLU(a), C_W=1.5, C_b=0.2), nngp_ntk(x, x2, 3, name, C_W=1.5, C_b=0.2)):
                assert torch.equal(got, want)


def test_leaky_relu_monte_carlo():
    "Seeded Monte Carlo over (u, v), 2¹⁸ samples per case: every estimate within four standard errors of the closed form."
    gen = torch.Generator().manual_seed(202)
    k11 = torch.tensor([1.0, 2.0, 0.4, 3.0], dtype=DT); k22 = torch.tensor([1.0, 0.5, 2.5, 3.0], dtype=DT)
    rho = torch.tensor([0.3, -0.7, 0.95, -0.2], dtype=DT)
    xi = torch.randn(2, 4, 2**18, generator=gen, dtype=DT)
    u = k11.sqrt()[:, None] * xi[0]
    v = k22.sqrt()[:, None] * (rho[:, None] * xi[0] + (1 - rho**2).sqrt()[:, None] * xi[1])
    for a in (0.05, 0.3, 0.8):
        S, Sd = leaky_relu_moments(k11, rho * (k11 * k22).sqrt(), k22, a)
        f = LeakyReLU(a)
        for closed, sample in ((S, f(u) * f(v)), (Sd, f.derivative(u) * f.derivative(v))):
            z = (closed - sample.mean(1)).abs() / (sample.std(1) / math.sqrt(sample.shape[1]))
            assert (z < 4).all(), (a, z)


def test_leaky_relu_finite_networks():
    """One hidden layer: K̂(x, x') = C_b + (C_W/n) Σᵢ σ(zᵢ(x))σ(zᵢ(x')) with z exactly Gaussian with covariance K¹, so
    𝔼K̂ = K² of `nngp_ntk(depth=1)` exactly; 400 seeded MLPs of width 64 must agree within four standard errors."""
    x = torch.tensor([[1.0, -0.5, 2.0], [0.3, 1.0, -1.0], [-1.0, -0.2, 0.4]], dtype=DT)
    a, C_W, C_b = 0.2, 1.6, 0.1
    K = nngp_ntk(x, None, 1, LeakyReLU(a), C_W=C_W, C_b=C_b)[0]
    samples = torch.stack([MLP(3, 64, 1, activation=LeakyReLU(a), C_W=C_W, C_b=C_b, seed=s, dtype=DT).empirical_nngp(x)
                           for s in range(400)])
    se = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - K).abs() < 4 * se).all()


def test_leaky_relu_matches_chapter_2():
    from geobook.rg_flow import kernel_flow, input_kernel, leaky_relu
    x = torch.tensor([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], dtype=DT)
    for a, C_W, C_b in [(0.05, 2.0, 0.0), (0.3, 1.4, 0.2), (0.9, 1.0, 0.5)]:
        flow = kernel_flow(leaky_relu(a), C_W, C_b, input_kernel(x, C_W, C_b), depth=8)
        for L in range(1, 8):
            K = nngp_ntk(x, None, L, LeakyReLU(a), C_W=C_W, C_b=C_b)[0]
            assert ((K - flow[L]).abs().max() / flow[L].abs().max()).item() < 1e-12


def test_leaky_relu_criticality():
    "At C_W = 2/(1 + a²), C_b = 0 the diagonal keeps K¹ and Θᴸ⁺¹(x, x) = (L + 1)K¹ (the derivation's He initialisation)."
    x = torch.tensor([[1.0, 2.0, -0.5, 0.1], [3.0, -1.0, 0.0, 2.0]], dtype=DT)
    for a in (0.01, 0.3, 0.7):
        C_W = 2 / (1 + a * a)
        k1 = C_W * (x * x).sum(1) / 4
        for L in (1, 10, 200):
            K, T = nngp_ntk(x, None, L, LeakyReLU(a), C_W=C_W)
            assert torch.allclose(K.diagonal(), k1, rtol=1e-12, atol=0)
            assert torch.allclose(T.diagonal(), (L + 1) * k1, rtol=1e-11, atol=0)


def test_leaky_relu_bad_input():
    for bad, exc in [(1.5, ValueError), (-0.1, ValueError), (float('nan'), ValueError), (float('inf'), ValueError),
                     ('0.1', TypeError), (True, TypeError), (None, TypeError), (torch.tensor(0.1), TypeError)]:
        for make in (lambda: LeakyReLU(bad), lambda: leaky_relu_moments(1.0, 0.5, 1.0, bad)):
            with pytest.raises(exc, match='`slope`'): make()
    with pytest.raises(ValueError, match='leaky_relu_moments'): quadrature_moments(LeakyReLU(0.1), 1.0, 0.5, 1.0)
    with pytest.raises(TypeError, match='`z`'): LeakyReLU(0.1)(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match='`z`'): LeakyReLU(0.1)('abc')
    with pytest.raises(ValueError, match='`k12` must satisfy'): leaky_relu_moments(1.0, 2.0, 1.0, 0.1)
    with pytest.raises(ValueError, match='LeakyReLU'): quadrature_moments(torch.nn.functional.leaky_relu, 1.0, 0.5, 1.0)
    sigma, dsigma = activation_fns(LeakyReLU(0.25))
    z = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=DT)
    assert torch.equal(sigma(z), torch.tensor([-0.5, -0.125, 0.5, 3.0], dtype=DT))
    assert torch.equal(dsigma(z), torch.tensor([0.25, 0.25, 1.0, 1.0], dtype=DT))
    assert torch.equal(LeakyReLU(0.25)(z.numpy()), sigma(z))                           # arrays accepted


def _nt_python() -> str | None:
    exe = os.environ.get('GEOBOOK_NT_PYTHON') or str(ROOT / '.venv-nt' / 'bin' / 'python')
    return exe if Path(exe).exists() else None


NT_SCRIPT = textwrap.dedent('''
    import json, math, sys
    import jax
    jax.config.update('jax_enable_x64', True)
    import jax.numpy as jnp
    from neural_tangents import stax
    cfg = json.loads(sys.argv[1])
    x = jnp.asarray(cfg['x'], dtype=jnp.float64)
    out = {}
    for a, C_W, C_b, L in cfg['cases']:
        layers = []
        for _ in range(L):
            layers += [stax.Dense(1, W_std=math.sqrt(C_W), b_std=math.sqrt(C_b) if C_b else None), stax.LeakyRelu(a)]
        kfn = stax.serial(*layers, stax.Dense(1, W_std=math.sqrt(C_W), b_std=math.sqrt(C_b) if C_b else None))[2]
        k = kfn(x, None, ('nngp', 'ntk'))
        out[str((a, C_W, C_b, L))] = [jnp.asarray(k.nngp).tolist(), jnp.asarray(k.ntk).tolist()]
    print(json.dumps(out))
''')


def test_leaky_relu_against_neural_tangents():
    """neural-tangents' LeakyRelu (ABRelu with slopes (a, 1)) in float64: off-diagonal entries to 1e-12 relative; the
    diagonal to 1e-7, neural-tangents' own √ε rounding at ρ = 1 (its ReLU diagonal is off by ~2e-8, benchmarks/bench_ntk.py)."""
    exe = _nt_python()
    if exe is None: pytest.skip('no Python with neural-tangents (set GEOBOOK_NT_PYTHON or create .venv-nt: make bench-nt)')
    gen = torch.Generator().manual_seed(303)
    x = torch.randn(6, 4, generator=gen, dtype=DT)
    cases = [(0.01, 2.0, 0.0, 3), (0.2, 1.8, 0.1, 2), (0.7, 1.2, 0.3, 4)]
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
    proc = subprocess.run([exe, '-c', NT_SCRIPT, json.dumps({'x': x.tolist(), 'cases': cases})], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nt = json.loads(proc.stdout.strip().splitlines()[-1])
    off = ~torch.eye(len(x), dtype=torch.bool)
    for a, C_W, C_b, L in cases:
        ours = nngp_ntk(x, None, L, LeakyReLU(a), C_W=C_W, C_b=C_b)
        for got, want in zip(ours, (torch.tensor(m, dtype=DT) for m in nt[str((a, C_W, C_b, L))])):
            rel = (got - want).abs() / want.abs().max()
            assert rel[off].max() < 1e-12, (a, L, rel[off].max())
            assert rel.diagonal().max() < 1e-7, (a, L, rel.diagonal().max())
