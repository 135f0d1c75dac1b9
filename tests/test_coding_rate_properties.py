"""Property tests (hypothesis) for geobook.coding_rate: the invariants the derivation of chapter 3 proves.

- ΔR >= 0 for any features and any hard or soft membership (concavity of log det, Jensen);
- ΔR = 0 for one class and for the uniform soft membership (all X_j equal: Jensen's equality case);
- R is invariant under orthogonal transforms of the features, and equals ½ logdet of the d×d matrix (Sylvester);
- labels and their one-hot soft membership give the same R_c; the size-grouped labels path equals a per-class loop,
  values and gradients, for unbalanced classes smaller and larger than d;
- the soft path for n < d (features in the basis of their row space) equals the d×d definition, and its gradient stays
  finite where the membership is exactly 0 (a masked Sinkhorn membership), where a √Π form gives NaN;
- Sinkhorn's output is non-negative with columns summing to 1, rows too once converged; its two forms agree; a pattern of
  -inf entries raises exactly when it has no perfect matching (checked against SciPy's bipartite matching);
- labels far beyond n are refused before anything is allocated;
- the eigengap ratio of a k-block membership with leakage ζ is 1/ζ, and 1 at k ± 1;
- MLC trains with fewer samples (or a smaller batch) than feature dimensions, and its eigengap rule is monotone in
  n_steps: a longer run sees the same evaluations and more, and keeps a state whose ρ is at least as large.
Tolerances: float64 rounding on log-determinants of order 10-100, i.e. 1e-9 relative.
"""
import itertools, math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from geobook.coding_rate import (coding_rate, coding_rate_reduction, sinkhorn, eigengap_ratio, clustering_accuracy, nmi,
                                 MLC, _sinkhorn_exp, _sinkhorn_log, _has_perfect_matching)

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

def _rc_loop(Z, y, eps):
    "R_c by a Python loop over the classes, from the definition (d×d log-determinants)."
    n, d = Z.shape
    out = 0.0
    for j in y.unique():
        nj = int((y == j).sum())
        out = out + nj / (2 * n) * torch.logdet(torch.eye(d, dtype=Z.dtype) + d / (nj * eps**2) * Z[y == j].T @ Z[y == j])
    return out

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
@given(sizes=st.lists(st.sampled_from([1, 1, 2, 3, 5, 8, 13, 40, 120]), min_size=1, max_size=12),
       d=st.integers(1, 24), grad=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_grouped_labels_match_loop(sizes, d, grad, seed):
    "Unbalanced classes, smaller and larger than d, several per block: the grouped path equals the loop (and its gradient)."
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((s,), j) for j, s in enumerate(sizes)])[torch.randperm(sum(sizes), generator=g)]
    Z = torch.randn(len(y), d, generator=g, dtype=torch.float64, requires_grad=grad)
    Rc, ref = coding_rate_reduction(Z, y, 0.5)[2], _rc_loop(Z, y, 0.5)
    assert math.isclose(Rc.detach().item(), float(ref.detach()), rel_tol=1e-10, abs_tol=1e-10)
    if grad:
        g1, = torch.autograd.grad(Rc, Z); g2, = torch.autograd.grad(ref, Z)
        assert torch.allclose(g1, g2, rtol=1e-8, atol=1e-10)

@SETTINGS
@given(n=st.integers(2, 12), extra=st.integers(1, 20), k=st.integers(1, 5), zeros=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_soft_wide_branch(n, extra, k, zeros, seed):
    "n < d: the row-space form equals the d×d definition; gradients finite even with memberships exactly 0."
    d = n + extra
    Z, g = _Z(n, d, 1.0, seed)
    Pi = torch.softmax(3 * torch.randn(k, n, generator=g, dtype=torch.float64), 0)
    if zeros and k > 1:
        Pi[0, 0] = 0.0; Pi = Pi / Pi.sum(0)
    Z.requires_grad_(); Pi.requires_grad_()
    Rc = coding_rate_reduction(Z, Pi, 0.5)[2]
    nj = Pi.sum(1)
    direct = sum(nj[j] / (2 * n) * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (nj[j] * 0.25) * (Z.T * Pi[j]) @ Z)
                 for j in range(k))
    assert math.isclose(Rc.item(), direct.item(), rel_tol=1e-9, abs_tol=1e-10)
    gZ, gP = torch.autograd.grad(Rc, (Z, Pi))
    dZ, dP = torch.autograd.grad(direct, (Z, Pi))
    assert torch.isfinite(gZ).all() and torch.isfinite(gP).all()
    assert torch.allclose(gZ, dZ, rtol=1e-7, atol=1e-9) and torch.allclose(gP, dP, rtol=1e-7, atol=1e-9)

def test_masked_sinkhorn_gradcheck_wide_and_tall():
    "The gradient through MLC's own membership (diagonal exactly 0), n < d and n > d, against finite differences."
    g = torch.Generator().manual_seed(0)
    def f(z, c):
        zn, cn = torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(c, dim=1)
        S = (cn @ cn.T).masked_fill(torch.eye(len(c), dtype=torch.bool), float('-inf'))
        return coding_rate_reduction(zn, sinkhorn(S, 20, 0.1), 0.5)[0]
    for n, d in [(4, 8), (6, 16), (9, 3)]:
        z = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
        c = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(f, (z, c))

def test_mlc_fewer_samples_than_features():
    "Regression: with n or the batch smaller than d_feat the old √Γ form made every parameter NaN after one step."
    X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    for n, bs in [(40, 8), (12, None)]:
        m = MLC(5, 16, 2, batch_size=bs, n_steps=6, eval_every=3, seed=0).fit(X[:n], show_progress=False)
        assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
        assert all(math.isfinite(o) for o, _, _ in m.history)
        assert m.predict(X).shape == (40,)

def test_mlc_rule_monotone_in_n_steps():
    "Deterministic training: the short run's evaluations are a prefix of the long run's, and the kept ρ never decreases."
    X = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
    short = MLC(6, 8, 3, n_steps=20, eval_every=5, patience=100, seed=3).fit(X, show_progress=False)
    long = MLC(6, 8, 3, n_steps=40, eval_every=5, patience=100, seed=3).fit(X, show_progress=False)
    assert long.selection[:len(short.selection)] == short.selection
    best = lambda m: max(r for _, r in m.selection)
    assert best(long) >= best(short)
    assert dict(long.selection)[long.best_step] == best(long)

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

@SETTINGS
@given(n=st.integers(1, 10), span=st.floats(0.1, 29.0), iters=st.integers(1, 60), seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_forms_agree(n, span, iters, seed):
    "The matrix-vector form and the log-domain form are the same iteration."
    g = torch.Generator().manual_seed(seed)
    logK = span * torch.rand(n, n, generator=g, dtype=torch.float64)
    assert torch.allclose(_sinkhorn_exp(logK, iters), _sinkhorn_log(logK, iters), rtol=1e-9, atol=1e-12)

@SETTINGS
@given(n=st.integers(1, 7), p=st.floats(0.15, 0.9), seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_impossible_patterns(n, p, seed):
    "A -inf pattern raises iff its allowed entries have no perfect matching (SciPy's bipartite matching decides)."
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) < p
    if not (P.any(0).all() and P.any(1).all()): return            # an empty row/column has its own message
    perfect = bool((maximum_bipartite_matching(csr_matrix(P.astype(np.int8)), perm_type='column') >= 0).all())
    assert _has_perfect_matching(P) == perfect
    S = torch.where(torch.as_tensor(P), torch.randn(n, n, dtype=torch.float64), torch.tensor(float('-inf'), dtype=torch.float64))
    if perfect: sinkhorn(S, n_iters=30)
    else:
        with pytest.raises(ValueError, match='no perfect matching'): sinkhorn(S, n_iters=30)

def test_huge_labels_refused_before_allocating():
    "Labels like [0, 1e9] on six points must not make bincount allocate gigabytes (a process once reached 18 GB)."
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Z = torch.randn(6, 3)
    with pytest.raises(ValueError, match='more than the n = 6 samples'): coding_rate_reduction(Z, [0, 10**9, 0, 1, 1, 0])
    with pytest.raises(ValueError, match='n_classes'): coding_rate_reduction(Z, [0, 1, 0, 1, 0, 1], n_classes=10**9)
    with pytest.raises(ValueError, match='more classes than'):
        coding_rate_reduction(Z, np.array([0, 2**63, 0, 1, 1, 0], dtype=np.uint64))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000      # kB: nothing near a gigabyte

@pytest.mark.parametrize('dtype,tol', [(torch.float16, 2**-8), (torch.bfloat16, 2**-7)])
def test_half_precision(dtype, tol):
    Z = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    R = coding_rate(Z)
    assert R.dtype == dtype and abs(R.item() - coding_rate(Z.double()).item()) <= 2 * tol * R.item()
    dR, _, _ = coding_rate_reduction(Z, torch.arange(40) % 3)
    assert dR.dtype == dtype and torch.isfinite(dR)
    assert sinkhorn(torch.randn(5, 5).to(dtype)).dtype == dtype

@SETTINGS
@given(k=st.integers(2, 6), b=st.integers(2, 8), zeta=st.floats(1e-4, 0.5))
def test_eigengap_ratio_of_block_memberships(k, b, zeta):
    n = k * b
    G = (1 - zeta) * torch.block_diag(*[torch.full((b, b), 1.0 / b, dtype=torch.float64)] * k) + zeta / n
    assert math.isclose(eigengap_ratio(G, k), 1 / zeta, rel_tol=1e-7)
    if k >= 3: assert math.isclose(eigengap_ratio(G, k - 1), 1.0, rel_tol=1e-7)
    if n - k >= 2: assert math.isclose(eigengap_ratio(G, k + 1), 1.0, rel_tol=1e-7)

@SETTINGS
@given(n=st.integers(1, 40), kt=st.integers(1, 5), kp=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_clustering_metrics(n, kt, kp, seed):
    "Accuracy is the best one-to-one matching (brute force over injections); NMI is scikit-learn's (arithmetic)."
    from sklearn.metrics import normalized_mutual_info_score
    rng = np.random.default_rng(seed)
    t, p = rng.integers(0, kt, n), rng.integers(0, kp, n)
    ut, up = np.unique(t), np.unique(p)
    small, large = (ut, up) if len(ut) <= len(up) else (up, ut)
    brute = max(sum(int(np.sum((t == a) & (p == b)) if len(ut) <= len(up) else np.sum((t == b) & (p == a)))
                    for a, b in zip(small, perm)) for perm in itertools.permutations(large, len(small))) / n
    assert math.isclose(clustering_accuracy(t, p), brute, rel_tol=1e-12)
    assert math.isclose(nmi(t, p), normalized_mutual_info_score(t, p), rel_tol=1e-9, abs_tol=1e-12)
