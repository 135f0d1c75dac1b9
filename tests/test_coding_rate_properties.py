"""Property tests (hypothesis) for geobook.coding_rate: the invariants the derivation of chapter 3 proves.

- ΔR >= 0 for any features and any hard or soft membership (concavity of log det, Jensen);
- ΔR = 0 for one class and for the uniform soft membership (all X_j equal: Jensen's equality case);
- R is invariant under orthogonal transforms of the features, and equals ½ logdet of the d×d matrix (Sylvester);
- labels and their one-hot soft membership give the same R_c;
- Sinkhorn's output is non-negative with columns summing to 1, rows too once converged.
Tolerances: float64 rounding on log-determinants of order 10-100, i.e. 1e-9 relative.
"""
import math
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from geobook.coding_rate import coding_rate, coding_rate_reduction, sinkhorn

SETTINGS = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))

def _Z(n, d, scale, seed, rank1=False):
    g = torch.Generator().manual_seed(seed)
    Z = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    if rank1: Z = Z[:, :1] * torch.randn(1, d, generator=g, dtype=torch.float64)
    return Z, g

def _labels(n, k, g):
    k = min(k, n)
    return torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])

@SETTINGS
@given(n=st.integers(2, 50), d=st.integers(1, 16), k=st.integers(1, 6), scale=st.floats(1e-3, 1e2),
       eps=st.floats(0.01, 3.0), rank1=st.booleans(), soft=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_rate_reduction_nonnegative(n, d, k, scale, eps, rank1, soft, seed):
    Z, g = _Z(n, d, scale, seed, rank1)
    if soft: memb = torch.softmax(4 * torch.randn(min(k, n), n, generator=g, dtype=torch.float64), 0)
    else: memb = _labels(n, k, g)
    dR, R, Rc = coding_rate_reduction(Z, memb, eps)
    assert torch.isfinite(dR) and torch.isfinite(R) and torch.isfinite(Rc)
    assert dR >= -1e-9 * max(1.0, R.item()), (dR.item(), R.item(), Rc.item())
    assert Rc >= -1e-12 and R >= -1e-12

@SETTINGS
@given(n=st.integers(1, 40), d=st.integers(1, 12), k=st.integers(1, 5), eps=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1))
def test_rate_reduction_zero_for_uninformative_membership(n, d, k, eps, seed):
    Z, _ = _Z(n, d, 1.0, seed)
    dR1 = coding_rate_reduction(Z, torch.zeros(n, dtype=torch.long), eps)[0]
    dRu = coding_rate_reduction(Z, torch.full((k, n), 1.0 / k, dtype=torch.float64), eps)[0]
    R = coding_rate(Z, eps).item()
    assert abs(dR1.item()) <= 1e-10 * max(1.0, R) and abs(dRu.item()) <= 1e-10 * max(1.0, R)

@SETTINGS
@given(n=st.integers(1, 40), d=st.integers(1, 40), eps=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1))
def test_rate_orthogonal_invariance_and_sylvester(n, d, eps, seed):
    Z, g = _Z(n, d, 1.0, seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    R = coding_rate(Z, eps)
    direct = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (n * eps**2) * Z.T @ Z)
    assert math.isclose(coding_rate(Z @ Q, eps).item(), R.item(), rel_tol=1e-10, abs_tol=1e-10)
    assert math.isclose(R.item(), direct.item(), rel_tol=1e-10, abs_tol=1e-10)

@SETTINGS
@given(n=st.integers(2, 40), d=st.integers(1, 30), k=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_labels_match_one_hot(n, d, k, seed):
    Z, g = _Z(n, d, 1.0, seed)
    y = _labels(n, k, g)
    hard = coding_rate_reduction(Z, y, 0.5)[2]
    soft = coding_rate_reduction(Z, torch.nn.functional.one_hot(y).T.to(torch.float64), 0.5)[2]
    assert math.isclose(hard.item(), soft.item(), rel_tol=1e-10, abs_tol=1e-10)

@SETTINGS
@given(n=st.integers(1, 12), scale=st.floats(1e-2, 1e3), eta=st.floats(0.05, 5.0), seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_marginals(n, scale, eta, seed):
    g = torch.Generator().manual_seed(seed)
    S = scale * torch.randn(n, n, generator=g, dtype=torch.float64)
    G = sinkhorn(S, n_iters=50, eta=eta)
    assert torch.isfinite(G).all() and (G >= 0).all()
    assert torch.allclose(G.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-10)
    if scale / eta <= 2:                   # well-conditioned: rows converge within 50 iterations
        assert torch.allclose(G.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-6)
