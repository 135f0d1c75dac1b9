"""Chapter 1: the trained ensemble at a finite time, against real networks (referee V3/M1).

`ntk_ensemble(..., t, lr)` gives the mean and covariance of f_t(X*) over initialisations after gradient flow for time t.
Here 400 seeded erf networks (depth 2, C_W = 1.5, C_b = 0.1, width 256, NTK parameterisation) are trained by full-batch
gradient descent on ½ Σ (f(xᵢ) − yᵢ)² for 25 steps of η = 0.2/λ_max(Θ), so ηλ_max t = 5: only partly trained (gradient
descent for t steps is the flow at time t up to O(η²λ²) per step in the fast modes). Mean and covariance at four test
points must agree within four standard errors; the converged (t = ∞) covariance and the prior must not.
"""
import math
import torch
from geobook.ntk import MLP, nngp_ntk, ntk_ensemble

DT = torch.float64


def train(seed, X, y, X_test, lr, steps, width=256):
    net = MLP(2, width, 2, activation='erf', C_W=1.5, C_b=0.1, seed=seed, dtype=DT)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad(); (0.5 * ((net(X)[:, 0] - y)**2).sum()).backward(); opt.step()
    with torch.no_grad(): return net(X_test)[:, 0]


def test_ensemble_at_finite_time_matches_trained_networks():
    torch.set_num_threads(1)
    phi = torch.tensor([0.0, 0.7, 1.5, 2.2, 3.0, 3.9], dtype=DT)
    X = math.sqrt(2) * torch.stack([phi.cos(), phi.sin()], 1); y = torch.sin(2 * phi)
    phs = torch.tensor([0.35, 2.6, 4.6, 5.6], dtype=DT)
    Xs = math.sqrt(2) * torch.stack([phs.cos(), phs.sin()], 1)
    K, T = nngp_ntk(torch.cat([Xs, X]), None, 2, 'erf', C_W=1.5, C_b=0.1)
    m = len(Xs)
    blocks = (K[m:, m:], K[:m, m:], K[:m, :m], T[m:, m:], T[:m, m:])
    lr, steps, B = 0.2 / torch.linalg.eigvalsh(T[m:, m:]).max().item(), 25, 400
    mu, Sig = ntk_ensemble(*blocks, y, t=steps, lr=lr)
    F = torch.stack([train(s, X, y, Xs, lr, steps) for s in range(B)])      # (B, m)
    mean_hat, Sig_hat = F.mean(0), torch.cov(F.T)
    se_mean = (Sig.diagonal() / B).sqrt()
    assert ((mean_hat - mu).abs() < 4 * se_mean).all(), ((mean_hat - mu) / se_mean)
    se_cov = ((Sig.diagonal()[:, None] * Sig.diagonal()[None] + Sig**2) / B).sqrt()   # Gaussian s.e. of a covariance
    assert ((Sig_hat - Sig).abs() < 4 * se_cov).all(), ((Sig_hat - Sig) / se_cov)
    se_tr = math.sqrt(2 * (Sig**2).sum().item() / B)                       # s.e. of the trace
    assert abs(Sig_hat.trace() - Sig.trace()) < 4 * se_tr
    for other in (ntk_ensemble(*blocks, y)[1], blocks[2]):                 # t = ∞ and the prior are excluded
        assert abs(Sig_hat.trace() - other.trace()) > 4 * se_tr, (Sig_hat.trace(), other.trace(), se_tr)
