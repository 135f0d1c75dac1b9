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
  n_steps, also when n_steps is not a multiple of eval_every: a longer run sees the same evaluations and more, and keeps
  a state whose ρ is at least as large; a seeded MLC is the same network in every thread (no global RNG);
- float32 log-determinants are within 1e-4 (relative) of the float64 value of the same float32 features, also for
  nearly collapsed, huge or tiny-ε features (where a plain float32 computation loses up to 9%);
- Sinkhorn: impossible patterns raise for any number of iterations (the exponential form once overflowed into NaN);
  a RuntimeWarning is issued exactly when a row is off by more than 0.1; the eigengap ratio refuses a Γ that is not
  doubly stochastic; a soft membership with many classes is chunked (bounded memory) or refused before allocating;
- robustness fixes: k-means and spectral clustering are scale-free (no overflow), ReduNet normalises rows stably and
  refuses zero rows, a float32 soft membership whose columns sum to 1 + 5e-5 gives ΔR >= 0.
Tolerances: float64 rounding on log-determinants of order 10-100, i.e. 1e-9 relative.
"""
import threading, warnings
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
    P = Pi / Pi.sum(0)                 # the definition on the simplex: Π's columns are renormalised (they sum to 1 here)
    nj = P.sum(1)
    direct = sum(nj[j] / (2 * n) * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (nj[j] * 0.25) * (Z.T * P[j]) @ Z)
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

def test_mlc_rule_monotone_when_n_steps_not_a_multiple():
    "Regression: fit also evaluated at t == n_steps, so n_steps = 43 could keep a state a run of 300 steps never sees."
    X = torch.randn(60, 6, generator=torch.Generator().manual_seed(1))
    runs = {s: MLC(6, 8, 3, n_steps=s, eval_every=5, patience=100, seed=3).fit(X, show_progress=False) for s in (21, 24, 40)}
    assert all(step % 5 == 0 for m in runs.values() for step, _ in m.selection)
    assert runs[21].selection == runs[24].selection == runs[40].selection[:len(runs[21].selection)]   # steps 0, 5, …, 20
    assert runs[21].best_step == runs[24].best_step
    assert max(r for _, r in runs[40].selection) >= max(r for _, r in runs[24].selection)

def test_mlc_seeded_construction_is_thread_safe():
    "Regression: fork_rng + manual_seed on the global generator raced between threads (13 of 160 models differed)."
    ref = {k: v.clone() for k, v in MLC(20, 16, 4, seed=0).state_dict().items()}
    state = torch.get_rng_state()
    bad = []
    def worker():
        for _ in range(10):
            sd = MLC(20, 16, 4, seed=0).state_dict()
            if not all(torch.equal(sd[k], ref[k]) for k in ref): bad.append(1)
    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert not bad
    assert torch.equal(state, torch.get_rng_state())                 # the global generator is never touched
    m = MLC(20, 16, 4, seed=0)
    assert torch.equal(m.cluster_head.weight, m.feature_head.weight)  # one-shot initialisation: C = Z at the start
    bound = 1 / math.sqrt(64)                                         # torch's default U(-1/√fan_in, 1/√fan_in)
    assert m.backbone[3].weight.abs().max() <= bound and m.backbone[3].weight.abs().max() > 0.9 * bound

def test_mlc_refuses_huge_batches_before_allocating():
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    X = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match='batch_size'): MLC(3, 4, 2, n_steps=1, seed=0).fit(X, show_progress=False)
    with pytest.raises(ValueError, match='eval_size'): MLC(3, 4, 2, n_steps=1, batch_size=64, eval_size=5000, seed=0).fit(X, show_progress=False)
    with pytest.raises(ValueError, match='n_sinkhorn'): MLC(3, 4, 2, n_sinkhorn=10**12, seed=0)
    with pytest.raises(ValueError, match='n_steps'): MLC(3, 4, 2, n_steps=0, seed=0)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000      # kB

@SETTINGS
@given(n=st.integers(1, 12), scale=st.floats(1e-2, 1e3), eta=st.floats(0.05, 5.0), seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_marginals(n, scale, eta, seed):
    g = torch.Generator().manual_seed(seed)
    S = scale * torch.randn(n, n, generator=g, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        G = sinkhorn(S, n_iters=50, eta=eta)
    warned = any('a row of Γ sums to' in str(w.message) for w in caught)
    assert warned == bool((G.sum(1) - 1).abs().max() > 0.1)         # warned exactly when a row is off by more than 0.1
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
@given(n=st.integers(1, 7), p=st.floats(0.15, 0.9), iters=st.sampled_from([30, 500, 2000]), f32=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_impossible_patterns(n, p, iters, f32, seed):
    """A -inf pattern raises iff its allowed entries have no perfect matching (SciPy's bipartite matching decides), for
    any number of iterations and in float32 too (the e^f, e^g form used to overflow into NaN rows at 200+ iterations)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching
    rng = np.random.default_rng(seed)
    P = rng.random((n, n)) < p
    if not (P.any(0).all() and P.any(1).all()): return            # an empty row/column has its own message
    perfect = bool((maximum_bipartite_matching(csr_matrix(P.astype(np.int8)), perm_type='column') >= 0).all())
    assert _has_perfect_matching(P) == perfect
    S = torch.where(torch.as_tensor(P), torch.randn(n, n, dtype=torch.float64), torch.tensor(float('-inf'), dtype=torch.float64))
    if f32: S = S.float()
    if perfect:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)          # forced zeros converge slowly: rows may warn
            G = sinkhorn(S, n_iters=iters)
        assert torch.isfinite(G).all() and torch.allclose(G.sum(0), torch.ones(n, dtype=G.dtype), atol=1e-5)
    else:
        with pytest.raises(ValueError, match='no perfect matching'): sinkhorn(S, n_iters=iters)

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('iters', [50, 200, 500, 2000])
def test_sinkhorn_impossible_pattern_never_nan(dtype, iters):
    "The referee's pattern: two rows that may only use one column. It used to come back as all-NaN rows."
    ninf = float('-inf')
    S = torch.tensor([[0., 0., 0.], [0., ninf, ninf], [0., ninf, ninf]], dtype=dtype)
    with pytest.raises(ValueError, match='no perfect matching'): sinkhorn(S, n_iters=iters)

def test_sinkhorn_bad_batches_and_extreme_eta():
    with pytest.raises(ValueError, match='non-empty'): sinkhorn(torch.zeros(0, 3, 3))
    S = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match='a row of Γ sums to'): G = sinkhorn(S, eta=1e-300)
    assert torch.allclose(G.sum(0), torch.ones(4, dtype=torch.float64))

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

def test_eigengap_ratio_refuses_non_doubly_stochastic():
    "Regression: Γ = 10 × a block membership gave 1e12, a random matrix 2.11, silently."
    blocks = torch.block_diag(torch.full((3, 3), 1 / 3, dtype=torch.float64), torch.full((3, 3), 1 / 3, dtype=torch.float64))
    for G in (10 * blocks, torch.rand(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)):
        with pytest.raises(ValueError, match='doubly stochastic'): eigengap_ratio(G, 2)
    assert eigengap_ratio(torch.eye(6, dtype=torch.float64), 2) == 1.0    # 6 components: no gap at k = 2
    assert eigengap_ratio(blocks, 2) == pytest.approx(1 / 1e-12)          # exactly 2 components: μ₂ floored

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


@pytest.mark.parametrize('fn', [clustering_accuracy, nmi])
def test_metrics_refuse_fractional_labels(fn):
    y = np.array([0, 1, 1, 2])
    with pytest.raises(ValueError, match='y_true'): fn(y + 0.5, y)
    with pytest.raises(ValueError, match='y_pred'): fn(y, y + 0.5)
    assert fn(y.astype(float), y) == pytest.approx(1.0)                 # integer-valued floats are labels

@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(2, 300), d=st.integers(1, 64), r=st.integers(1, 64), log_scale=st.floats(-3, 3),
       log_noise=st.floats(-8, 0), log_eps=st.floats(-2.5, 0.5), unit=st.booleans(), soft=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_float32_log_determinants(n, d, r, log_scale, log_noise, log_eps, unit, soft, seed):
    """float32 R and R_c are within 1e-4 (relative, or absolute below 1) of the float64 values of the *same* float32
    features: nearly collapsed, huge and tiny-ε features included, where the plain float32 computation was off by 9%."""
    g = torch.Generator().manual_seed(seed)
    r = min(r, d)
    Z = torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)
    Z = (Z + 10**log_noise * torch.randn(n, d, generator=g, dtype=torch.float64)) * 10**log_scale
    if unit: Z = torch.nn.functional.normalize(Z, dim=1)
    Z32 = Z.float()
    memb = torch.softmax(3 * torch.randn(3, n, generator=g, dtype=torch.float64), 0) if soft else torch.arange(n) % min(3, n)
    try: ref = coding_rate_reduction(Z32.double(), memb, 10**log_eps)
    except ValueError: return                                          # float64 itself refuses (overflow): nothing to compare
    got = coding_rate_reduction(Z32, memb.float() if soft else memb, 10**log_eps)
    for a, b in zip(got[1:], ref[1:]):
        assert abs(a.item() - b.item()) <= 1e-4 * max(1.0, abs(b.item())), (a.item(), b.item())

def test_float32_collapsed_rows_match_float64():
    "The referee's case: 1000 identical unit rows in R⁶⁴; plain float32 gave R = 6.0962 at ε = 0.01 (exact 6.6846)."
    u = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(0)), dim=0)
    Z = u.repeat(1000, 1)
    for eps in (0.5, 0.1, 0.05, 0.01):
        exact = 0.5 * math.log(1 + 64 / eps**2)
        assert abs(coding_rate(Z, eps).item() - exact) <= 1e-5 * exact

def test_soft_membership_many_classes_is_chunked_or_refused():
    "Regression: Π (200000, 64) on Z (64, 64) tried to allocate 3.3 GB; k = 20000 took 1.4 GB."
    import resource
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(64, 64, generator=g, dtype=torch.float64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match='membership'):
        coding_rate_reduction(Z, torch.full((200_000, 64), 1 / 200_000, dtype=torch.float64))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000        # kB: the input itself is 100 MB
    Pi = torch.softmax(torch.randn(700, 64, generator=g, dtype=torch.float64), 0)      # k·m² = 2.9e6: three chunks
    Rc = coding_rate_reduction(Z, Pi)[2].item()
    nj = Pi.sum(1)
    ref = sum(nj[j] / (2 * 64) * torch.logdet(torch.eye(64, dtype=torch.float64) + 64 / (nj[j] * 0.25) * (Z.T * Pi[j]) @ Z)
              for j in range(700)).item()
    assert math.isclose(Rc, ref, rel_tol=1e-10)

def test_soft_columns_within_tolerance_are_renormalised():
    "Regression: float32 columns summing to 1.00005 (accepted) gave ΔR = -1.8e-4 < 0."
    Z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    dR = coding_rate_reduction(Z, torch.full((2, 6), 0.500025))[0].item()
    assert abs(dR) <= 1e-6                                                  # uniform membership: ΔR = 0
    Pi = torch.softmax(torch.randn(3, 6, generator=torch.Generator().manual_seed(1)), 0) * (1 + 5e-5)
    assert coding_rate_reduction(Z, Pi)[0].item() >= -1e-6
    assert math.isclose(coding_rate_reduction(Z, Pi)[0].item(), coding_rate_reduction(Z, Pi / Pi.sum(0))[0].item(), rel_tol=1e-6, abs_tol=1e-7)

def test_scale_free_clustering_and_stable_redunet():
    from geobook.coding_rate import kmeans, spectral_clustering, ReduNet, sample_manifolds
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.randn(20, 2, generator=g) * 0.1, torch.randn(20, 2, generator=g) * 0.1 + 3])
    ref = kmeans(X, 2, seed=0)
    assert torch.equal(kmeans(X * 1e20, 2, seed=0), ref)                   # float32: squared distances would overflow
    assert torch.equal(kmeans(X.double() * 1e200, 2, seed=0), ref)
    A = torch.exp(-torch.cdist(X, X) ** 2)
    assert torch.equal(spectral_clustering(A * 3e38, 2, seed=0), spectral_clustering(A, 2, seed=0))
    with pytest.raises(ValueError, match='`A` is all zero'): spectral_clustering(torch.zeros(6, 6), 2)
    Zr = torch.nn.functional.normalize(torch.randn(30, 6, generator=g, dtype=torch.float64), dim=1)
    yr = torch.arange(30) % 3
    net = ReduNet(n_layers=3).fit(Zr, yr)
    assert torch.allclose(net(Zr[:4] * 1e200), net(Zr[:4]), atol=1e-12)   # huge rows: the same directions
    assert torch.allclose(net(Zr[:4] * 1e-300), net(Zr[:4]), atol=1e-12)
    with pytest.raises(ValueError, match='zero row'): net(torch.zeros(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match='zero row'): net.predict(torch.zeros(2, 6, dtype=torch.float64))
    assert torch.equal(net.membership(Zr.numpy(), 0), net.membership(Zr, 0))  # numpy input
    h = ReduNet(n_layers=3, eta=1e300).fit(Zr, yr).history                   # a huge step: z ← direction of ∂ΔR/∂z
    assert all(math.isfinite(v) and v > 0 for v in h)
    with pytest.raises(ValueError, match='`labels`'): ReduNet(n_layers=2).fit(Zr, torch.cat([yr[:-1], torch.tensor([10**9])]))
    with pytest.raises(ValueError, match='`noise`'): sample_manifolds(5, ['line'], 3, noise=1e300, seed=0)
    m = MLC(5, 16, 2, seed=0)
    assert m.membership(np.random.default_rng(0).standard_normal((4, 16))).shape == (4, 4)

def _delta_R_split(sizes, dims, d, eps):
    "Closed-form ΔR of mutually orthogonal classes with flat spectra Z_jᵀZ_j = (n_j/d_j) P_j (the chapter's derivation)."
    n = sum(sizes)
    R = sum(dj / 2 * math.log(1 + d * nj / (n * dj * eps**2)) for nj, dj in zip(sizes, dims))
    Rc = sum(nj * dj / (2 * n) * math.log(1 + d / (dj * eps**2)) for nj, dj in zip(sizes, dims))
    return R - Rc

def test_best_split_of_dimensions_depends_on_precision():
    """Referee minor 4: 'the equal split is best' needs the theorem's precision condition ε⁴ < (n_j/n)(d/d_j)².
    d = 16, four classes of 100: the closed form is checked against coding_rate_reduction on orthogonal flat-spectrum
    features; the best split (brute force over all 455 splits) is (4,4,4,4) while g is concave on [1, 16]
    (ε⁴ < ¼(16/13)², ε < 0.784), and one large class beyond: ε = 1.5 -> (2,2,2,10) with ΔR 0.917 > 0.898 (equal split),
    ε = 2 -> (1,1,1,13) with 0.482 > 0.399."""
    d, sizes = 16, [100] * 4
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    def features(dims):
        blocks, c = [], 0
        for nj, dj in zip(sizes, dims):
            Q = torch.linalg.qr(torch.randn(nj, dj, generator=g, dtype=torch.float64))[0]
            blocks.append(math.sqrt(nj / dj) * Q @ U[:, c:c + dj].T); c += dj
        return torch.cat(blocks)
    labels = torch.arange(4).repeat_interleave(100)
    for dims, eps in [((2, 2, 2, 10), 1.5), ((4, 4, 4, 4), 0.5), ((1, 1, 1, 13), 2.0)]:
        assert math.isclose(coding_rate_reduction(features(dims), labels, eps)[0].item(), _delta_R_split(sizes, dims, d, eps), rel_tol=1e-9)
    splits = [s for s in itertools.product(range(1, 14), repeat=4) if sum(s) == d]
    best = lambda eps: max(splits, key=lambda s: (_delta_R_split(sizes, s, d, eps), -max(s)))
    bound = (0.25 * (16 / 13) ** 2) ** 0.25
    assert math.isclose(bound, 0.7845, abs_tol=1e-4)
    for eps in (0.2, 0.4, 0.6, 0.75, bound * 0.999):
        assert best(eps) == (4, 4, 4, 4)
    assert tuple(sorted(best(1.5))) == (2, 2, 2, 10) and tuple(sorted(best(2.0))) == (1, 1, 1, 13)
    assert round(_delta_R_split(sizes, (2, 2, 2, 10), d, 1.5), 3) == 0.917 and round(_delta_R_split(sizes, (4,) * 4, d, 1.5), 3) == 0.898
    assert round(_delta_R_split(sizes, (1, 1, 1, 13), d, 2.0), 3) == 0.482 and round(_delta_R_split(sizes, (4,) * 4, d, 2.0), 3) == 0.399
    # concavity of one class's value g at its own dimension 4 (second difference) switches sign at ε = √2 (ε⁴ = ¼·4²)
    gval = lambda x, eps: x / 2 * math.log(1 + 0.25 * d / eps**2 / x) - 0.25 * x / 2 * math.log(1 + d / eps**2 / x)
    h = 1e-3
    second = lambda eps: gval(4 + h, eps) - 2 * gval(4, eps) + gval(4 - h, eps)
    assert second(math.sqrt(2) * 0.99) < 0 < second(math.sqrt(2) * 1.01)

def test_sinkhorn_warns_when_rows_are_far_off_in_float32():
    """Referee minor 11: at η = 1e-6 in float32 rows summed to [0.5, 1, 2, 0.5] silently. (Rows off by less than 0.1, as
    for seed 1 here, where they are off by 0.046, are not warned about: that is the documented tolerance.)"""
    S = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    with pytest.warns(RuntimeWarning, match='a row of Γ sums to'): G = sinkhorn(S, eta=1e-6)
    assert (G.sum(1) - 1).abs().max() > 0.1 and torch.allclose(G.sum(0), torch.ones(4), atol=1e-5)


# --- the LU path of R_c without autograd (issue 14, item 6: speed of the grouped labels path) ---------------------------
import geobook.coding_rate as _cr


def _calls(monkeypatch):
    "Count calls of the Cholesky routine `_logdet_eye_plus` (the LU path calls it only to fall back)."
    n = []
    real = _cr._logdet_eye_plus
    monkeypatch.setattr(_cr, '_logdet_eye_plus', lambda *a, **k: n.append(tuple(a[0].shape)) or real(*a, **k))
    return n


@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize('sizes', [(100,) * 10, (19951,) + (1,) * 49, (3, 7, 7, 40)])
def test_lu_path_equals_cholesky_path(monkeypatch, dtype, rtol, sizes):
    "Without autograd R_c comes from LU where it certifies positive definiteness; it equals the Cholesky path's R_c"
    " (the same function with autograd on) to rounding: 1e-12 relative in float64, 2e-6 in float32 (seed 0)."
    g = torch.Generator().manual_seed(0)
    d = 64 if sum(sizes) > 10000 else 128
    y = torch.cat([torch.full((s,), j) for j, s in enumerate(sizes)])
    Z = torch.randn(len(y), d, generator=g, dtype=torch.float64).to(dtype)
    labels, counts = _cr._as_labels(y, len(y), None)
    with torch.no_grad():
        calls = _calls(monkeypatch)
        lu = _cr._compress_hard(Z, labels, counts, 0.5)
        # certified on Gaussian features; in float32 the blocks of small classes (s < 10: c/s·‖G‖·u·s above 10⁻⁴ of
        # their log-determinant) go to the Cholesky path, whose refined error estimate decides there
        assert all(dtype == torch.float32 and shape[-1] < 10 for shape in calls), calls
        if dtype == torch.float64 or min(sizes) >= 10: assert calls == []
    chol = _cr._compress_hard(Z.clone().requires_grad_(), labels, counts, 0.5).detach()
    assert len(calls) > 0                                           # with autograd: Cholesky
    torch.testing.assert_close(lu, chol, rtol=rtol, atol=0)
    ref = sum(s / (2 * len(y)) * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (s * 0.25) *
                                              Z[y == j].double().T @ Z[y == j].double()) for j, s in enumerate(sizes))
    torch.testing.assert_close(lu.double(), ref, rtol=max(rtol, 1e-12) * 10, atol=0)


def test_lu_path_falls_back_to_cholesky_when_a_row_is_swapped(monkeypatch):
    "A class whose I + cG needs a row swap (|M₁₀| > |M₀₀|) is factored by Cholesky; the value is the closed form"
    " ½·(n_j/n)·log det(I + c/n_j·ZⱼᵀZⱼ) to 1e-12 (float64)."
    Zj = torch.tensor([[1.0, 0.0], [5.0, 9.8]], dtype=torch.float64)   # G = ZᵀZ = [[26, 49], [49, 96.04]]
    y = torch.tensor([0, 0])
    labels, counts = _cr._as_labels(y, 2, None)
    c = 2 / (2 * 0.5 ** 2)                                               # d/(n_j ε²)
    M = torch.eye(2, dtype=torch.float64) + c * Zj.T @ Zj
    assert abs(M[1, 0]) > abs(M[0, 0])                                   # partial pivoting swaps rows 0 and 1
    with torch.no_grad():
        calls = _calls(monkeypatch)
        Rc = _cr._compress_hard(Zj, labels, counts, 0.5)
    assert calls == [(1, 2, 2)]
    assert abs(float(Rc) - 0.5 * math.log(float(torch.linalg.det(M)))) <= 1e-12 * abs(float(Rc))


def test_lu_path_keeps_the_named_errors():
    "Without autograd a non-finite Z or a hopeless ε still raises the Cholesky path's named errors."
    Z = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(20) % 2
    with torch.no_grad():
        Zn = Z.clone(); Zn[3, 1] = float('nan')
        with pytest.raises(ValueError, match='non-finite'): coding_rate_reduction(Zn, y)
        with pytest.raises(ValueError, match='too small'): coding_rate_reduction(Z, y, eps=1e-30)


def _near_duplicates(seed, dtype=torch.float64):
    "The referee's case: a class of 5 copies of one Gaussian row and a class of 40 Gaussian rows in R³² (seed)."
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(32, generator=g, dtype=torch.float64)
    Z = torch.cat([z.expand(5, 32), torch.randn(40, 32, generator=g, dtype=torch.float64)]).to(dtype)
    return Z, torch.tensor([0] * 5 + [1] * 40)


def test_lu_path_never_answers_where_rounding_decides():
    "Referee ch3g W1: with ε = 3e-8 (seed 2) the rounded I + cG of the duplicated class has an eigenvalue of about −37"
    " while LU's pivots are positive; the LU path must not return its value (−167 for a true 41.7): ΔR raises the"
    " named error, with and without autograd, as the Cholesky path always did."
    Z, y = _near_duplicates(2)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            with pytest.raises(ValueError, match='eps'):
                coding_rate_reduction(Z.clone().requires_grad_(grad), y, eps=3e-8)


@pytest.mark.parametrize('seed', range(12))
@pytest.mark.parametrize('eps', [3e-8, 1e-7, 1e-5, 1e-3])
def test_float64_values_are_accurate_or_refused(seed, eps):
    "Referee ch3g W5: in float64 a value is returned only if it is within 10⁻⁴ (relative) of the log-determinants"
    " computed with mpmath at 40 digits; otherwise a ValueError naming `eps` (seeds 0–11, near-duplicate classes)."
    mpmath = pytest.importorskip('mpmath')
    Z, y = _near_duplicates(seed)
    try:
        dR, R, Rc = coding_rate_reduction(Z, y, eps=eps)
    except ValueError as e:
        assert 'eps' in str(e); return
    mpmath.mp.dps = 40
    def logdet(X):
        m, d = X.shape
        A = mpmath.matrix(X.tolist())
        M = mpmath.eye(d) + (mpmath.mpf(d) / (m * mpmath.mpf(eps) ** 2)) * (A.T * A)
        return mpmath.log(mpmath.det(M))
    n = Z.shape[0]
    Rc_ref = sum(mpmath.mpf(int((y == j).sum())) / (2 * n) * logdet(Z[y == j].numpy()) for j in (0, 1))
    assert abs(float(Rc) - float(Rc_ref)) <= 1e-4 * abs(float(Rc_ref))
