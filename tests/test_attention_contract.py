"""Chapter 5 (geobook.attention) on the CPU: the contract with torch's scaled_dot_product_attention (SDPA), device
following, once-differentiability, scores far below zero, the tiled neighborhood kernels, the named mask and the
benchmark's stated facts (issue 18, part 4; issue 16's attention items).

Tolerances: float32 kernels against float64 references or SDPA in float32 on inputs of unit variance and N ≤ 300:
float32 rounding gives ~1e-6, so 2e-5 on outputs and 1e-4 on gradients, as in the chapter. Seeds are fixed per test.
"""
import ast, re, sys, types, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
import numba
import geobook.attention as A
from geobook.attention import (attention_reference, flash_attention, neighborhood_attention,
                               neighborhood_attention_reference)

ROOT = Path(__file__).resolve().parents[1]
sdpa = torch.nn.functional.scaled_dot_product_attention


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _close(a, b, tol):
    err = float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0
    assert a.shape == b.shape and err < tol, (tuple(a.shape), tuple(b.shape), err)


# ---------------------------------------------------------------------------------------------------------------------
# causal alignment
@pytest.mark.parametrize('nq,nk', [(40, 90), (90, 40), (64, 64)])
def test_causal_is_sdpa_causal_lower_right(nq, nk):
    "causal=True is SDPA with attn_mask=causal_lower_right(N_q, N_k): outputs and gradients; rows with no key give 0."
    from torch.nn.attention.bias import causal_lower_right
    q, k, v = _randn(2, 3, nq, 16, seed=1), _randn(2, 3, nk, 16, seed=2), _randn(2, 3, nk, 16, seed=3)
    q1, k1, v1 = (t.clone().requires_grad_() for t in (q, k, v))
    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    ours = flash_attention(q1, k1, v1, causal=True, backend='cpu')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Lower right causal bias')   # SDPA's note on rows with no key
        ref = sdpa(q2, k2, v2, attn_mask=causal_lower_right(nq, nk))
    _close(ours, ref, 2e-5)
    do = _randn(2, 3, nq, 16, seed=4)
    (ours * do).sum().backward(); (ref * do).sum().backward()
    for a, b in ((q1, q2), (k1, k2), (v1, v2)): _close(a.grad, b.grad, 1e-4)
    top_left = sdpa(q, k, v, is_causal=True)
    gap = float((ours.detach() - top_left).abs().max())
    assert (gap > 0.5) if nq != nk else (gap < 2e-5), gap     # is_causal=True is another mask when N_q ≠ N_k


def test_docstrings_name_the_causal_convention():
    for f in (flash_attention, attention_reference):
        assert 'causal_lower_right' in f.__doc__ and 'is_causal' in f.__doc__


# ---------------------------------------------------------------------------------------------------------------------
# device following
def test_auto_follows_cpu_tensors_even_when_a_gpu_is_usable(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(A.cuda, 'is_available', lambda: True)
    assert A._resolve_backend('auto', torch.zeros(2)) == 'cpu'


def test_auto_follows_cuda_tensors(monkeypatch):
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'gpu')
    fake = types.SimpleNamespace(device=torch.device('cuda', 0), is_cuda=True)
    assert A._resolve_backend('auto', fake) == 'cuda'
    with pytest.raises(ValueError, match=r"`backend`='cpu' needs CPU tensors"):
        A._resolve_backend('cpu', fake)


def test_cuda_backend_on_cpu_tensors_is_an_error_on_a_gpu(monkeypatch):
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'gpu')
    with pytest.raises(ValueError, match=r"`backend`='cuda' needs tensors on a CUDA device"):
        A._resolve_backend('cuda', torch.zeros(2))
    q = _randn(1, 1, 8, 4)
    with pytest.raises(ValueError, match='CUDA device'):
        flash_attention(q, q, q, backend='cuda')


def test_cpu_backend_never_calls_numpy_on_other_devices():
    with pytest.raises(ValueError, match='needs CPU tensors'):
        A._resolve_backend('cpu', torch.empty(3, device='meta'))


# ---------------------------------------------------------------------------------------------------------------------
# SDPA's input contract
@pytest.mark.parametrize('shapes', [
    ((33, 16), (21, 16), (21, 16)),                    # (N, D): no batch, no heads
    ((5, 33, 16), (5, 21, 16), (5, 21, 16)),           # (H, N, D)
    ((5, 33, 16), (5, 21, 16), (5, 21, 24)),           # D_v > D
    ((2, 5, 33, 24), (2, 5, 21, 24), (2, 5, 21, 8)),   # D_v < D
    ((2, 5, 33, 16), (1, 5, 21, 16), (1, 5, 21, 16)),  # broadcast batch
    ((1, 2, 20, 160), (1, 2, 20, 160), (1, 2, 20, 160)),   # D > 128 on the CPU
])
@pytest.mark.parametrize('causal', [False, True])
def test_matches_sdpa_contract(shapes, causal):
    from torch.nn.attention.bias import causal_lower_right
    ts = [_randn(*s, seed=i).requires_grad_() for i, s in enumerate(shapes)]
    ts2 = [t.detach().clone().requires_grad_() for t in ts]
    nq, nk = shapes[0][-2], shapes[1][-2]
    ours = flash_attention(*ts, causal=causal, backend='cpu')
    ref = sdpa(*ts2, attn_mask=causal_lower_right(nq, nk) if causal else None)
    _close(ours, ref, 2e-5)
    do = _randn(*ref.shape, seed=9)
    g1 = torch.autograd.grad((ours * do).sum(), ts)
    g2 = torch.autograd.grad((ref * do).sum(), ts2)
    for a, b in zip(g1, g2): _close(a, b, 1e-4)


@pytest.mark.parametrize('nq,nk', [(0, 21), (33, 0), (0, 0)])
def test_empty_inputs_as_sdpa(nq, nk):
    q, k, v = _randn(5, nq, 16, seed=1), _randn(5, nk, 16, seed=2), _randn(5, nk, 16, seed=3)
    o, lse = flash_attention(q, k, v, return_lse=True, backend='cpu')
    assert torch.equal(o, sdpa(q, k, v)) and o.shape == (5, nq, 16)
    assert lse.shape == (5, nq) and bool((lse == float('-inf')).all())


def test_mixed_dtypes_raise_like_sdpa():
    q = _randn(1, 1, 8, 4)
    with pytest.raises(RuntimeError):
        sdpa(q.half(), q.double(), q)
    for fn in (flash_attention, attention_reference):
        with pytest.raises(TypeError, match='one dtype'):
            fn(q.half(), q.double(), q)


def test_head_dim_limit_only_on_cuda(monkeypatch):
    q = _randn(1, 1, 8, 130)
    _close(flash_attention(q, q, q, backend='cpu'), sdpa(q, q, q), 2e-5)
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'sim')
    with pytest.raises(ValueError, match="CUDA kernels' limit"):
        flash_attention(q, q, q, backend='cuda')


def test_dtype_and_device_of_result():
    q = _randn(1, 2, 9, 8, dtype=torch.float64)
    o, lse = flash_attention(q, q, q, return_lse=True, backend='cpu')
    assert o.dtype == lse.dtype == torch.float64 and o.device == q.device
    _close(o, attention_reference(q, q, q), 2e-5)


# ---------------------------------------------------------------------------------------------------------------------
# once differentiable
@pytest.mark.parametrize('fn', ['flash', 'na'])
def test_double_backward_fails_clearly(fn):
    q = _randn(1, 1, 9, 4, seed=5).requires_grad_()
    f = (lambda t: flash_attention(t, t, t, backend='cpu')) if fn == 'flash' else \
        (lambda t: neighborhood_attention(t, t, t, 3, backend='cpu'))
    (gq,) = torch.autograd.grad(f(q).square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match='once_differentiable'):
        gq.sum().backward()
    # o.sum(): the incoming gradient needs none (torch's once_differentiable would return gq detached, and this backward
    # would fail with 'does not require grad'); the inputs do, so the same clear error; and gq keeps its value
    (gq,) = torch.autograd.grad(f(q).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiable once'):
        gq.sum().backward()
    (g1,) = torch.autograd.grad(f(q).sum(), q)
    assert torch.equal(gq.detach(), g1) and not g1.requires_grad


# ---------------------------------------------------------------------------------------------------------------------
# −FLT_MAX: scores far below zero are not mistaken for masked rows
def test_neg_is_flt_max():
    assert A._NEG == float(np.finfo(np.float32).min)


@pytest.mark.parametrize('causal', [False, True])
def test_scores_far_below_zero(causal):
    "Every score −2·10³² (below the old −10³⁰ stand-in): equal scores, so O is the mean of the visible values."
    q, k = torch.full((1, 2, 5, 4), 1e16), torch.full((1, 2, 7, 4), -1e16)
    v = _randn(1, 2, 7, 4, seed=6).requires_grad_()
    o, lse = flash_attention(q, k, v, causal=causal, return_lse=True, backend='cpu')
    seen = torch.arange(7)[None, :] <= torch.arange(5)[:, None] + 2 if causal else torch.ones(5, 7, dtype=torch.bool)
    expect = (seen.double() / seen.sum(1, keepdim=True)) @ v.detach().double()
    _close(o, expect.expand(1, 2, 5, 4), 1e-6)
    assert torch.isfinite(lse).all() and float((lse / -2e32 - 1).abs().max()) < 1e-6
    # the dense oracle too divides by ℓ directly (L = m + log ℓ rounds to m here, so e^{S − L} would give the sum)
    ref = attention_reference(q.double(), k.double(), v.detach().double(), causal=causal)
    _close(ref, expect.expand(1, 2, 5, 4), 1e-12)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('a', [-2e32, -1e38, -3.0, 0.0, 50.0])
@pytest.mark.parametrize('causal', [False, True])
def test_reference_equal_scores_exact(dtype, a, causal):
    """attention_reference on rows whose visible scores all equal a (q = 1, k = a/2 in every coordinate of D = 4, τ = ½):
    O is the uniform average of the n visible values and L = a + log n, against a float64 computation: O to 4 ulps of
    the dtype (a mean of ≤ 7 values), L equal to a + log n rounded to the dtype within 1 ulp (float32: both terms are
    rounded before the sum). At a = −2·10³² and −10³⁸ the log n vanishes in the rounding (spacing ≫ log 7) and the old
    oracle, which formed e^{S − L}, returned n times the mean."""
    q = torch.ones(1, 2, 5, 4, dtype=dtype)
    k = torch.full((1, 2, 7, 4), a / 2, dtype=dtype)
    v = _randn(1, 2, 7, 4, seed=8, dtype=torch.float64).to(dtype)
    o, lse = attention_reference(q, k, v, causal=causal, return_lse=True)
    seen = torch.arange(7)[None, :] <= torch.arange(5)[:, None] + 2 if causal else torch.ones(5, 7, dtype=torch.bool)
    n = seen.sum(1).double()
    expect_o = (seen.double() / n[:, None]) @ v.double()
    eps = torch.finfo(dtype).eps
    assert float((o.double() - expect_o).abs().max()) <= 4 * eps * float(v.abs().max()), (o, expect_o)
    expect_l = (torch.tensor(float(k[0, 0, 0, 0]) * 2, dtype=torch.float64) + n.log()).to(dtype).double()   # a + log n
    err = (lse.double() - expect_l).abs() / expect_l.abs().clamp_min(1)
    assert float(err.max()) <= eps, (lse, expect_l)
    if abs(a) > 1e30: assert torch.equal(lse[0, 0], torch.full((5,), float(k[0, 0, 0, 0]) * 2, dtype=dtype))


def test_reference_ordinary_scores_against_float64():
    "Finite ordinary scores (unit-variance inputs, causal with N_q ≠ N_k and rows with no key): float32 reference O and L within 2e-6 of float64 softmax / logsumexp."
    import math
    q, k, v = _randn(2, 3, 9, 8, seed=11), _randn(2, 3, 6, 8, seed=12), _randn(2, 3, 6, 8, seed=13)
    o, lse = attention_reference(q, k, v, causal=True, return_lse=True)
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(~A._causal_mask(9, 6, 'cpu'), -math.inf)
    L = torch.logsumexp(s, -1)
    P = torch.nan_to_num(torch.exp(s - L[..., None]), nan=0.0)
    fin = torch.isfinite(L)
    assert torch.equal(fin, torch.isfinite(lse)) and int((~fin).sum()) == 2 * 3 * 3     # queries 0-2 see no key
    _close(o, P @ v.double(), 2e-6)
    _close(torch.where(fin, lse, 0.), torch.where(fin, L, 0.), 2e-6)
    assert (o[~fin] == 0).all()


def test_reference_gradients_finite_and_correct():
    "The reference stays differentiable: gradcheck in float64 with a causal mask leaving rows without keys (N_q > N_k)."
    q, k, v = (_randn(1, 1, n, 3, seed=s, dtype=torch.float64).requires_grad_() for n, s in ((5, 1), (3, 2), (3, 3)))
    f = lambda q, k, v: tuple(torch.where(torch.isfinite(t), t, 0.) for t in attention_reference(q, k, v, causal=True,
                                                                                               return_lse=True))
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_scores_far_below_zero_neighborhood():
    q, k = torch.full((1, 1, 20, 4), 1e16), torch.full((1, 1, 20, 4), -1e16)
    v = _randn(1, 1, 20, 4, seed=7)
    o = neighborhood_attention(q, k, v, 5, backend='cpu')
    M = torch.from_numpy(A._dense_mask_axis(20, 5, 1, False)).double()
    _close(o, (M / 5) @ v.double(), 1e-6)                     # equal scores: the mean over each window


def test_scores_beyond_float32_raise():
    q = torch.full((1, 1, 4, 4), 1e19)
    with pytest.raises(ValueError, match='beyond float32 range'):
        flash_attention(q, -q, torch.ones(1, 1, 4, 4), backend='cpu')
    one = torch.ones(1, 1, 4, 4, dtype=torch.float64)     # v beyond float32: rescaled exactly (test_attention_precision)
    o = flash_attention(one, one, one * 1e300, backend='cpu')
    assert float((o / 1e300 - 1).abs().max()) <= 2.0 ** -22         # v·2⁻⁹⁹⁶ rounded to float32, and back


# ---------------------------------------------------------------------------------------------------------------------
# neighborhood attention: tiles along the sequence, reference validated like the fused version
@pytest.mark.parametrize('shape,kw', [((1, 2, 300, 8), dict(kernel_size=13, dilation=3)),
                                      ((2, 1, 200, 16), dict(kernel_size=9, causal=True)),
                                      ((1, 1, 10, 140, 8), dict(kernel_size=(3, 7), dilation=(3, 2), causal=(False, True)))])
def test_neighborhood_tiled_against_reference(shape, kw):
    q, k, v = (_randn(*shape, seed=s).requires_grad_() for s in (1, 2, 3))
    o, lse = neighborhood_attention(q, k, v, return_lse=True, backend='cpu', **kw)
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    o2, lse2 = neighborhood_attention_reference(q2, k2, v2, return_lse=True, **kw)
    _close(o, o2, 2e-5); _close(lse, lse2, 2e-5)
    do, dl = _randn(*o.shape, seed=4), _randn(*lse.shape, seed=5)
    ((o * do).sum() + (lse * dl).sum()).backward()
    ((o2 * do.double()).sum() + (lse2 * dl.double()).sum()).backward()
    for a, b in ((q, q2), (k, k2), (v, v2)): _close(a.grad, b.grad, 1e-4)


def test_neighborhood_kernels_split_a_1d_sequence_into_tiles_and_give_the_same_bits():
    "1-D, B·H = 1: the work items are tiles of the sequence (N/64 of them), and 1 or 4 threads give identical results."
    g = np.random.default_rng(0)
    q, k, v, do = (g.standard_normal((1, 300, 8)).astype(np.float32) for _ in range(4))
    mrow, delta = (g.standard_normal((1, 300)).astype(np.float32) for _ in range(2))
    wrow = np.exp2(-np.abs(g.standard_normal((1, 300)))).astype(np.float32)          # 1/ℓ ∈ (0, 1]
    geo = (1, 300, 1, 9, 1, 2, False, False)
    def run(threads):
        prev = numba.get_num_threads(); numba.set_num_threads(threads)
        try:
            o, dq, dk, dv = (np.empty_like(q) for _ in range(4))
            m, l = np.empty((1, 300), np.float32), np.empty((1, 300), np.float32)
            A._on_threads(A._na_fwd_cpu, q, k, v, np.float32(0.3), *geo, o, m, l)
            A._on_threads(A._na_bwd_dq_cpu, q, k, v, do, mrow, wrow, delta, np.float32(0.3), *geo, dq)
            A._on_threads(A._na_bwd_dkdv_cpu, q, k, v, do, mrow, wrow, delta, np.float32(0.3), *geo, dk, dv)
            return o, m, l, dq, dk, dv
        finally: numba.set_num_threads(prev)
    if numba.config.NUMBA_NUM_THREADS < 2: pytest.skip('needs 2 Numba threads')
    one, many = run(1), run(min(4, numba.config.NUMBA_NUM_THREADS))
    assert all(np.array_equal(a, b) for a, b in zip(one, many))
    assert -(-300 // A._BY_CPU) >= 2          # the 1-D sequence is more than one work item


def test_work_items_of_the_neighborhood_kernels_cover_every_query_once():
    "Each stripe w of W writes disjoint rows: run stripe by stripe on NaN-filled outputs; every row written once."
    g = np.random.default_rng(1)
    q, k, v = (g.standard_normal((2, 150, 4)).astype(np.float32) for _ in range(3))
    o, m, l = np.full_like(q, np.nan), np.full((2, 150), np.nan, np.float32), np.full((2, 150), np.nan, np.float32)
    for w in range(3): A._na_fwd_cpu(q, k, v, np.float32(0.5), 1, 150, 1, 5, 1, 1, False, False, o, m, l, w, 3)
    assert np.isfinite(o).all() and np.isfinite(m).all() and np.isfinite(l).all()


@pytest.mark.parametrize('BH,X,Y', [(1, 1, 300), (2, 9, 64), (3, 5, 65), (1, 7, 1)])
def test_na_item_is_the_work_item_decomposition(BH, X, Y):
    """`_na_item` (the work-item setup shared by the three neighborhood CPU kernels): item t = (bh·X + x)·⌈Y/64⌉ + block
    covers columns [64·block, min(Y, 64·block + 64)) of row x of head bh; over all items every (bh, x, y) exactly once."""
    nyb = -(-Y // A._BY_CPU)
    seen = np.zeros((BH, X, Y), int)
    for t in range(BH * X * nyb):
        bh, x, y0, y1 = A._na_item(t, X, Y)
        assert (bh * X + x) * nyb + y0 // A._BY_CPU == t and y0 % A._BY_CPU == 0
        assert 0 < y1 - y0 <= A._BY_CPU and y1 == min(Y, y0 + A._BY_CPU)
        seen[bh, x, y0:y1] += 1
    assert (seen == 1).all()


def test_na_kernels_share_one_work_item_helper():
    "The three neighborhood CPU kernels take their work items from `_na_item`, and none repeats its arithmetic."
    import inspect
    for f in (A._na_fwd_cpu, A._na_bwd_dq_cpu, A._na_bwd_dkdv_cpu):
        src = inspect.getsource(f.py_func)
        assert '_na_item(t, X, Y)' in src and 'nyb' not in src, f.__name__


@pytest.mark.parametrize('bad,match', [(dict(kernel_size=4), 'must be odd'), (dict(kernel_size=7, dilation=5), 'exceeds'),
                                       (dict(kernel_size=(3, 3)), 'one value or 1'), (dict(kernel_size=3, causal='y'), 'bool'),
                                       (dict(kernel_size=0), '>= 1'), (dict(kernel_size=3, scale=0.0), '`scale`')])
def test_neighborhood_reference_validates_like_the_fused_version(bad, match):
    q = _randn(1, 1, 33, 4)
    for fn in (neighborhood_attention, neighborhood_attention_reference):
        with pytest.raises((ValueError, TypeError), match=match):
            fn(q, q, q, **bad)


# ---------------------------------------------------------------------------------------------------------------------
# code structure: named mask, constants, docstrings, thread pool
def test_mask_is_named_and_becomes_the_kernel_array_at_launch():
    m = A._Mask('window', 0, (4, 5), (3, 5), (1, 1), (False, True))
    a = m.to_array()
    assert a.dtype == np.int32 and a[A._M_KIND] == A._WINDOW and a[A._M_Y] == 5 and a[A._M_KY] == 5 and a[A._M_CY] == 1
    assert A._Mask('causal', off=-7).to_array()[A._M_OFF] == -7
    src = Path(A.__file__).read_text()
    assert not re.search(r'\bmp\[\d', src), 'the mask array is read by number somewhere'
    assert '_mask_params' not in src


def test_no_public_kernel_constants():
    assert A.__all__ == ['attention_reference', 'flash_attention', 'neighborhood_attention',
                         'neighborhood_attention_reference']
    for name in ('LOG2E', 'NEG', 'BQ_CPU', 'BK_CPU', 'TQ', 'TK', 'TKB', 'TQB', 'DMAX'):
        assert not hasattr(A, name), name


TEX = re.compile(r'\$|\\[a-zA-Z]+|\^\{|_\{')


def test_docstrings_are_unicode_not_tex():
    for name in dir(A):
        obj = getattr(A, name)
        doc = getattr(obj, '__doc__', None) if callable(obj) and getattr(obj, '__module__', '') == A.__name__ else None
        if doc: assert not TEX.search(doc), (name, TEX.search(doc).group())
    assert not TEX.search(A.__doc__)


def test_equations_commented_in_the_kernels():
    src = Path(A.__file__).read_text()
    for eq in ('m_new = max(m', 'ℓ ← αℓ + ΣP', 'dS = P∘(dP − Δ)', 'acc ← α·acc + PV', 'dQ = τ·dS K', 'dK = τ·dSᵀ Q',
               'dV += Pᵀ dO', 'L = m + log ℓ', 'Δ = rowsum(dO∘O) − dL'):
        assert eq in src, eq


def test_thread_pool_is_kept_between_calls():
    q = _randn(1, 1, 300, 8)
    flash_attention(q, q, q, backend='cpu')
    pools = dict(A._POOL)
    flash_attention(q, q, q, backend='cpu')
    assert A._POOL == pools
    if numba.get_num_threads() > 1: assert len(pools) == 1


# ---------------------------------------------------------------------------------------------------------------------
# the benchmark states what it does
BENCH = ROOT / 'benchmarks' / 'bench_attention.py'


def test_benchmark_docstring_matches_the_code():
    doc = ast.get_docstring(ast.parse(BENCH.read_text()))
    assert 'parallel=True' not in doc
    for kern in (A._flash_fwd_cpu, A._flash_bwd_dq_cpu, A._flash_bwd_dkdv_cpu, A._flash_bwd_fused_cpu, A._na_fwd_cpu):
        assert not kern.targetoptions.get('parallel'), kern     # serial nogil kernels on a thread pool
        assert kern.targetoptions.get('nogil')
    assert 'thread' in doc and 'materialises' not in doc


def test_benchmark_measures_sdpa_backward_at_every_size():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_attention as B
    finally: sys.path.remove(str(BENCH.parent))
    for quick in (True, False):
        cfg = B.cpu_configs(quick)
        for passes in ('forward', 'fwd+bwd'):
            assert {N for p, N, _ in cfg if p == passes} == set(B.cpu_sizes(quick)), (quick, passes)
    assert 16384 in B.cpu_sizes(False)


def test_launch_plans_are_made_once_per_shape():
    "The CUDA launch plans (mask array, tile ranges) are cached per (mask, N_q, N_k, device): no rebuild per call."
    m = A._Mask('causal', off=-3)
    a, b = A._plans(m, 103, 100, 'sim'), A._plans(m, 103, 100, 'sim')
    assert a is b
    np.testing.assert_array_equal(a[0], m.to_array())
    for x, y in zip(a[1:], A._tile_ranges(m, 103, 100)): np.testing.assert_array_equal(x, y)


def test_forked_child_gets_its_own_thread_pool():
    "A child forked after the parent used the pool (e.g. DataLoader workers) must not wait on the parent's threads."
    import multiprocessing as mp
    if numba.get_num_threads() < 2: pytest.skip('one thread: no pool')
    q = _randn(1, 1, 300, 8)
    expect = flash_attention(q, q, q, backend='cpu')
    ctx = mp.get_context('fork')
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_call, (q,)).get(timeout=120)
    assert torch.equal(got, expect)


def _child_call(q):
    return flash_attention(q, q, q, backend='cpu')


# ---------------------------------------------------------------------------------------------------------------------
# validate_inputs=False: no device→host read, same result on finite inputs, NaN/inf make their batch·head NaN
_READS = ('tolist', 'item', '__bool__', '__float__', '__int__', '__index__')


def _no_read_back(monkeypatch):
    "Every tensor → host read raises from here on (on a GPU each is a synchronisation)."
    def read_back(*a, **kw): raise RuntimeError('device→host read')
    for n in _READS: monkeypatch.setattr(torch.Tensor, n, read_back)


@pytest.mark.parametrize('fn,kw', [(flash_attention, {}), (flash_attention, {'causal': True}),
                                   (neighborhood_attention, {'kernel_size': 5, 'dilation': 2})])
def test_unchecked_call_reads_nothing_back_and_gives_the_same_bits(monkeypatch, fn, kw):
    q, k, v = (_randn(2, 3, 40, 16, seed=s) for s in (1, 2, 3))
    o, lse = fn(q, k, v, return_lse=True, backend='cpu', **kw)
    for dt in (torch.float32, torch.float64):                     # float64 within [2⁻⁶⁴, 2⁶⁴]: no rescaling either way
        o_dt = fn(q.to(dt), k.to(dt), v.to(dt), backend='cpu', **kw)
        with monkeypatch.context() as m:
            _no_read_back(m)
            with pytest.raises(RuntimeError, match='device→host read'):      # the checked call reads back (once)
                fn(q.to(dt), k.to(dt), v.to(dt), backend='cpu', **kw)
            o2, lse2 = fn(q.to(dt), k.to(dt), v.to(dt), return_lse=True, backend='cpu', validate_inputs=False, **kw)
        assert torch.equal(o2, o_dt) and o2.dtype == dt
    assert torch.equal(lse2.float(), lse)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))         # the gradients too
    g1 = torch.autograd.grad(fn(qg, kg, vg, backend='cpu', **kw).square().sum(), (qg, kg, vg))
    g2 = torch.autograd.grad(fn(qg, kg, vg, backend='cpu', validate_inputs=False, **kw).square().sum(), (qg, kg, vg))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize('which,bad', [(0, float('nan')), (1, float('nan')), (2, float('inf')), (1, -float('inf'))])
@pytest.mark.parametrize('fn,kw', [(flash_attention, {}), (neighborhood_attention, {'kernel_size': 3})])
def test_unchecked_non_finite_inputs_give_nan_in_their_batch_head(fn, kw, which, bad):
    q, k, v = (_randn(2, 3, 20, 8, seed=s) for s in (4, 5, 6))
    ref, lref = fn(q, k, v, return_lse=True, backend='cpu', **kw)
    qkv = [q, k, v]
    qkv[which] = qkv[which].clone()
    qkv[which][1, 2, 7, 3] = bad
    with pytest.raises(ValueError, match='non-finite'):                 # the default still refuses them
        fn(*qkv, backend='cpu', **kw)
    o, lse = fn(*qkv, return_lse=True, backend='cpu', validate_inputs=False, **kw)
    assert o[1, 2].isnan().all() and lse[1, 2].isnan().all()
    hit = torch.zeros(2, 3, dtype=torch.bool); hit[1, 2] = True
    assert torch.equal(o[~hit], ref[~hit]) and torch.equal(lse[~hit], lref[~hit])


def test_unchecked_float64_beyond_float32_is_cast_as_it_is():
    "Checked: rescaled exactly (test_attention_precision); unchecked: cast to float32 (q → inf), so NaN comes out."
    q, k, v = (_randn(1, 2, 10, 4, seed=s).double() for s in (7, 8, 9))
    o = flash_attention(q * 1e300, k * 1e-300, v, backend='cpu')
    assert torch.isfinite(o).all()
    assert flash_attention(q * 1e300, k * 1e-300, v, backend='cpu', validate_inputs=False).isnan().all()


@pytest.mark.parametrize('bad', ['no', 1, None, np.array([True, False])])
def test_validate_inputs_must_be_a_bool(bad):
    q = _randn(1, 1, 6, 4, seed=0)
    with pytest.raises(TypeError, match='`validate_inputs`'):
        flash_attention(q, q, q, backend='cpu', validate_inputs=bad)
    with pytest.raises(TypeError, match='`validate_inputs`'):
        neighborhood_attention(q, q, q, 3, backend='cpu', validate_inputs=bad)


# ---------------------------------------------------------------------------------------------------------------------
# fp32_precision applies to float32 inputs only (referee ch5f, item 2: float64 inputs ran on TF32 after the cast)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('precision', ['ieee', 'tf32', '3xtf32'])
def test_fp32_precision_follows_the_callers_dtype(monkeypatch, dtype, precision):
    """The referee's probe (probe2.py) without a GPU: the backend is 'cuda', the tensor-core forward "applies" (GPU test
    patched away) and is forced ('always'); both CUDA forwards are stand-ins that record their call and return the
    CPU result. float32 with 'tf32'/'3xtf32' must reach the tensor-core forward with that precision; float64 (cast to
    float32 inside) and 'ieee' must not, whatever the flag. The output is the float64 reference's to float32 rounding."""
    import geobook.attention as A
    calls = []
    cpu = lambda q, k, v, s: A._forward_impl(q.float(), k.float(), v.float(), s, A._Mask('full'), 'cpu')
    monkeypatch.setattr(A, '_resolve_backend', lambda backend, x: 'cuda')
    monkeypatch.setattr(A, '_mma_applies', lambda q, mask, precision='ieee':
                        mask.kind == 'full' and A._mma_dtype(q, precision) is not None)
    monkeypatch.setattr(A, '_TENSOR_CORES', 'always')
    monkeypatch.setattr(A, '_forward_mma', lambda q, k, v, s, p='ieee', mask=None:
                        (calls.append(('mma', q.dtype, p)), cpu(q, k, v, s))[1])
    monkeypatch.setattr(A, '_forward_tiled', lambda q, k, v, s, mask: (calls.append(('tiled', q.dtype)), cpu(q, k, v, s))[1])
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g, dtype=torch.float64).to(dtype) for n in (70, 90, 90))
    o = A.flash_attention(q, k, v, backend='cuda', fp32_precision=precision)
    want = [('mma', torch.float32, precision)] if dtype == torch.float32 and precision != 'ieee' else [('tiled', torch.float32)]
    assert calls == want, calls
    assert o.dtype == dtype
    ref = A.attention_reference(q.double(), k.double(), v.double())
    assert float((o.double() - ref).abs().max()) < 2e-5
