"""Chapter 5: gradients of inputs outside float32's range, launches of more batch·heads than a CUDA grid holds, and the
empty batch of neighborhood attention (referee ch5o's and ch5p's open findings).

1. `_fit_float32` scales float64 (and float32) inputs outside the kernels' range by exact powers of two. The forward was
   exact, but autograd multiplied dO by 2^(e_v) before the cast to float32, so v = 2¹⁰⁰⁰ gave NaN gradients, v = 2⁻¹⁰⁰⁰
   and q, k = 2⁻⁶⁰⁰ gave zeros. `_RescaledAttentionFn` now scales the incoming gradients itself. Every gradient is
   checked against float64 autograd of the dense reference with the bound derived in tests/test_attention_precision.py:
     |dV̂ − dV| ≤ tol·Σᵢ Pᵢⱼ|dOᵢ|,  |dQ̂ − dQ| ≤ tol·τ·Σⱼ Pᵢⱼ Mᵢ|kⱼ|,  |dK̂ − dK| ≤ tol·τ·Σᵢ Pᵢⱼ Mᵢ|qᵢ|,
   tol = (2N_k + N_q + D + 16)·u, u = 2⁻²⁴, with Mᵢ = maxⱼ Σ_d|dOᵢ_d||vⱼ_d| + |rowsum(dO∘O)ᵢ| + |dLᵢ| (the triangle
   inequality covers one pass over (dO, dL) and two passes summed). The inputs are float32 numbers times powers of two,
   so the kernels read them exactly and the bound is the kernels' own. For q, k both tiny every float64 score underflows
   (P uniform in the reference too).
2. BH > 65535 (CUDA's gridDim.y): `_forward_impl` and `_backward_impl` launch slices of at most `_GRID_Y` batch·heads.
   Under the simulator (a subprocess) with `_GRID_Y` = 2, BH = 3: the same bits as one launch.
3. `neighborhood_attention` of an empty batch is differentiable (it returned tensors without a graph).
"""
import math, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch
import geobook.attention as A
from geobook.attention import flash_attention, neighborhood_attention

ROOT = Path(__file__).resolve().parents[1]
U = 2.0 ** -24
P2 = 2.0 ** 1000


def _inputs(sq, sk, sv, seed, N=12, D=4, dtype=torch.float64):
    "q, k, v, dO (1, 2, N, D) and dL (1, 2, N): float32 draws times powers of two, in `dtype`."
    g = torch.Generator().manual_seed(seed)
    draw = lambda *s: torch.randn(*s, generator=g).to(dtype)
    return draw(1, 2, N, D) * sq, draw(1, 2, N, D) * sk, draw(1, 2, N, D) * sv, draw(1, 2, N, D), draw(1, 2, N)


def _mask(na: bool, causal: bool, N: int):
    if na: return torch.from_numpy(A._dense_mask_axis(N, 5, 1, causal))
    return torch.ones(N, N, dtype=torch.bool).tril() if causal else torch.ones(N, N, dtype=torch.bool)


def _reference(q, k, v, mask, scale):
    "O, L and P in float64 (masked softmax), differentiable."
    s = scale * q @ k.transpose(-1, -2)
    s = s.masked_fill(~mask, float('-inf'))
    L = torch.logsumexp(s, -1)
    P = torch.exp(s - L[..., None])
    return P @ v, L, P


def _check(q, k, v, do, dl, na=False, causal=False, with_lse=False, scale=None):
    """Ratios |ĝ − g|/(tol·bound) (≤ 1 passes) of dQ, dK, dV from the kernels (CPU) against float64 autograd."""
    N, D = q.shape[-2], q.shape[-1]
    tau = 1 / math.sqrt(D) if scale is None else scale
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    if na: o, lse = neighborhood_attention(*x, 5, causal=causal, scale=scale, backend='cpu', return_lse=True)
    else: o, lse = flash_attention(*x, causal=causal, scale=scale, backend='cpu', return_lse=True)
    ((o * do).sum() + ((lse * dl).sum() if with_lse else 0)).backward()
    r = [t.detach().double().requires_grad_() for t in (q, k, v)]
    o2, L2, P = _reference(*r, _mask(na, causal, N), tau)
    ((o2 * do.double()).sum() + ((L2 * dl.double()).sum() if with_lse else 0)).backward()
    qd, kd, vd, dod = (t.double() for t in (q, k, v, do))
    M = ((dod.abs() @ vd.abs().transpose(-1, -2)).amax(-1) + (dod * o2.detach()).sum(-1).abs()
         + (dl.double().abs() if with_lse else 0))[..., None]
    P = P.detach()
    bounds = (tau * (P * M) @ kd.abs(), tau * (P * M).transpose(-1, -2) @ qd.abs(), P.transpose(-1, -2) @ dod.abs())
    tol = (2 * N + N + D + 16) * U
    for t in x: assert torch.isfinite(t.grad).all()
    return [float(((t.grad.double() - r_.grad).abs() / (tol * b)).nan_to_num(0.0).max())   # 0/0: both exactly 0
            for t, r_, b in zip(x, r, bounds)]


CASES = {                                   # (scale of q, k, v)
    'v_huge': (1.0, 1.0, P2),               # e_v = 1000: dO·2¹⁰⁰⁰ overflowed float32 (NaN gradients)
    'v_tiny': (1.0, 1.0, 1 / P2),           # e_v = −1000: dO·2⁻¹⁰⁰⁰ underflowed (zero gradients)
    'qk_tiny': (2.0 ** -600, 2.0 ** -600, 1.0),   # q, k read as 0 by float32: zero dQ, dK
    'q_zero_k_tiny': (0.0, 2.0 ** -600, 1.0),     # dQ = τ·dS·k ≈ 2⁻⁶⁰⁰ (was 0), dK = 0 exactly
    'qk_apart': (P2, 1 / P2, 1.0),          # e = −1000 (the case that always worked)
    'all_apart': (P2, 1 / P2, 2.0 ** 20),   # e and e_v together
}


@pytest.mark.parametrize('with_lse', [False, True])
@pytest.mark.parametrize('kind', ['flash', 'flash_causal', 'na'])
@pytest.mark.parametrize('case', list(CASES))
def test_rescaled_inputs_have_float64_gradients(case, kind, with_lse):
    q, k, v, do, dl = _inputs(*CASES[case], seed=len(case) + len(kind))
    ratios = _check(q, k, v, do, dl, na=kind == 'na', causal=kind == 'flash_causal', with_lse=with_lse)
    assert max(ratios) <= 1.0, ratios


def test_two_passes_when_dO_and_dL_lie_apart():
    "v = 2¹⁰⁰⁰ with dL: dO' = dO·2¹⁰⁰⁰ and dL ~ 1 lie 2¹⁰⁰⁰ apart, so the backward runs twice (counted), within the bound."
    calls, impl = [], A._backward_impl
    def counted(*a, **kw):
        calls.append(1)
        return impl(*a, **kw)
    q, k, v, do, dl = _inputs(1.0, 1.0, P2, seed=3)
    A._backward_impl = counted
    try: ratios = _check(q, k, v, do, dl, with_lse=True)
    finally: A._backward_impl = impl
    assert len(calls) == 2 and max(ratios) <= 1.0, (calls, ratios)
    assert A._gradient_parts(5, 5 - 64) == [(5, True, True)] and len(A._gradient_parts(5, 5 - 65)) == 2
    assert A._gradient_parts(None, 3) == [(3, False, True)] and A._gradient_parts(None, None) == []


def test_float32_inputs_rescaled():
    """float32 v = 2⁻¹⁰⁰ (below 2⁻⁶⁴: e_v = −100) and v near FLT_MAX (2¹²⁴·N_k > FLT_MAX/2: e_v > 0), gradients within
    the bound; dO·2^(e_v) is no longer formed (it was 2⁻¹⁰⁰·dO: subnormal for |dO| < 2⁻²⁶)."""
    for sv in (2.0 ** -100, 2.0 ** 124):
        q, k, v, do, dl = _inputs(1.0, 1.0, sv, seed=5, dtype=torch.float32)
        assert A._fit_float32(q, k, v, 0.5).ev != 0
        assert max(_check(q, k, v, do, dl, with_lse=True)) <= 1.0


def test_fit_float32_exponents():
    """The powers of two against their definitions. float32 inside the kernels' range: nothing (the plain path). float64:
    always normalised, t = ⌊log₂ τ⌋, e_v = ⌊log₂ max|v|⌋, the kernels' q·2^(t+e) and k·2⁻ᵉ balanced (largest entries
    within a factor 4 of each other, τ₀ ∈ [1, 2)); for q, k both tiny, a and b bring the backward's q·2^(e+t+a) and
    k·2^(b−e) to [2ᶜ, 2ᶜ⁺¹) with τ₀·D·2^(2c+2) ≤ 2⁻³⁸; scores not negligible: no a, b."""
    q, k, v, _, _ = _inputs(1.0, 1.0, 1.0, seed=7)
    assert A._fit_float32(q.float(), k.float(), v.float(), 0.5) == A._Fit()
    f = A._fit_float32(q, k, v, 0.5)
    assert f.grads and f.t == -1 and f.ev == A._top(float(v.abs().max())) and f.a == f.b == 0
    mq, mk = float(q.abs().max()) * 2.0 ** (f.t + f.e), float(k.abs().max()) * 2.0 ** -f.e
    assert 0.25 <= mq / mk <= 4
    assert A._fit_float32(q, k, v * 2.0 ** 700, 0.5).ev == A._top(float(v.abs().max())) + 700
    qt, kt = q * 2.0 ** -600, k * 2.0 ** -600
    f = A._fit_float32(qt, kt, v, 0.5)
    mq, mk = (float(t.abs().max()) for t in (A._ldexp(qt, f.e + f.t + f.a), A._ldexp(kt, f.b - f.e)))
    c = A._top(mq)
    assert f.a > 0 and f.b > 0 and A._top(mk) == c and 1 * 4 * 2.0 ** (2 * c + 2) <= 2.0 ** -38
    # τ = 2⁶⁰ with q ~ 2⁻⁷⁰, k ~ 1: q lies below 2⁻⁶⁴ but the scores are of order 2⁻¹⁰·D, not negligible
    f = A._fit_float32(q * 2.0 ** -70, k, v, 2.0 ** 60)
    assert f.a == f.b == 0 and A._fit_float32(q.float() * 2.0 ** -70, k.float(), v.float(), 2.0 ** 60) == A._Fit()


def test_huge_scale_tiny_q_gradients():
    "The last case end to end: τ = 2⁶⁰, q ~ 2⁻⁷⁰: scores of order 1, gradients within the bound (no backward rescaling)."
    q, k, v, do, dl = _inputs(2.0 ** -70, 1.0, 1.0, seed=9)
    assert max(_check(q, k, v, do, dl, with_lse=True, scale=2.0 ** 60)) <= 1.0


def test_plain_inputs_keep_the_plain_path():
    """float32 inputs inside [2⁻⁶⁴, 2⁶⁴]: no rescaling, no extra read-back in the backward (`_exponents` is never
    called); float64 inputs: one read-back of (max|dO|, max|dL|) per backward, one reduction even with return_lse."""
    q, k, v, do, dl = _inputs(1.0, 1.0, 1.0, seed=11)
    called, exponents = [], A._exponents
    A._exponents = lambda *t: called.append([None if x is None else tuple(x.shape) for x in t]) or exponents(*t)
    try:
        x = [t.float().clone().requires_grad_() for t in (q, k, v)]
        flash_attention(*x, backend='cpu').backward(do.float())
        assert not called and all(torch.isfinite(t.grad).all() for t in x)
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        flash_attention(*x, backend='cpu').backward(do)                   # L unused: its gradient stays None
        o, lse = flash_attention(*x, backend='cpu', return_lse=True)
        ((o * do).sum() + (lse * dl).sum()).backward()
    finally: A._exponents = exponents
    assert called == [[(2, 12, 4), None], [(2, 12, 4), (2, 12)]], called


def test_float64_bits_unchanged_by_the_rescaling_function():
    """Ordinary float64 inputs now run through `_RescaledAttentionFn` (v, τ, dO and dL scaled to [1, 2)): scaling by
    powers of two before the kernels and back after changes no bit while no float32 intermediate is subnormal and dO,
    dL lie within 2⁶⁴ of each other (one pass), so here O, L and the gradients equal those of the plain float32 path
    on the same (rounded) inputs, cast back."""
    q, k, v, do, dl = _inputs(1.0, 1.0, 3.0, seed=17)
    do = do * 1000.0
    outs = []
    for dt in (torch.float64, torch.float32):
        x = [t.to(dt).clone().requires_grad_() for t in (q, k, v)]
        o, lse = flash_attention(*x, causal=True, backend='cpu', return_lse=True)
        ((o * do.to(dt)).sum() + (lse * dl.to(dt)).sum()).backward()
        outs.append([o.double(), lse.double()] + [t.grad.double() for t in x])
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize('factor', [2.0 ** 200, 2.0 ** -1000, 1e39])
@pytest.mark.parametrize('which', ['dO', 'dL'])
def test_float64_incoming_gradients_outside_float32(factor, which):
    """float64 dO or dL beyond float32's range with q, k, v inside it (they were cast to inf or 0 on the way to the
    float32 kernels: NaN or zero gradients): within the bound."""
    q, k, v, do, dl = _inputs(1.0, 1.0, 1.0, seed=19)
    if which == 'dO': do = do * factor
    else: dl = dl * factor
    assert max(_check(q, k, v, do, dl, with_lse=True)) <= 1.0


@pytest.mark.parametrize('scale', [2.0 ** -100, 2.0 ** -130, 2.0 ** 100, 1e40])
def test_extreme_scale(scale):
    """τ outside [2⁻⁶⁴, 2⁶⁴] (products with τ such as dQ = τ·dS·k under- or overflowed float32; 10⁴⁰ is no float32 at all):
    the kernels get τ·2⁻ᵗ ∈ [1, 2) and q·2ᵗ. q, k scaled so that the scores are of order 1 (or negligible for 2⁻¹³⁰)."""
    sq = 1.0 if scale < 1 else 1 / scale
    if scale == 2.0 ** -100: sq = 2.0 ** 100
    q, k, v, do, dl = _inputs(sq, 1.0, 1.0, seed=23)
    f = A._fit_float32(q, k, v, scale)
    assert f.t == A._top(scale) and 1 <= math.ldexp(scale, -f.t) < 2
    assert max(_check(q, k, v, do, dl, with_lse=True, scale=scale)) <= 1.0
    if scale != 1e40:                                      # float32 inputs too (τ a float32 number)
        q32, k32, v32, do32, dl32 = (t.float() for t in (q, k, v, do, dl))
        assert max(_check(q32, k32, v32, do32, dl32, with_lse=True, scale=scale)) <= 1.0


@pytest.mark.parametrize('sq, sk', [(0.0, P2), (0.0, 1e39), (P2, 0.0), (0.0, 1 / P2)])
def test_one_of_q_k_zero_and_the_other_beyond_float32(sq, sk):
    "q ≡ 0 (or k ≡ 0): every score is 0, and e brings the other into [1, 2) (it was cast to inf: NaN gradients)."
    q, k, v, do, dl = _inputs(sq, sk, 1.0, seed=29)
    f = A._fit_float32(q, k, v, 0.5)
    other = k * 2.0 ** -f.e if sq == 0 else q * 2.0 ** (f.e + f.t)
    assert 1 <= float(other.abs().max()) < 2
    assert max(_check(q, k, v, do, dl, with_lse=True)) <= 1.0


RECHECK = {                     # referee ch5r: (τ, scale of q, k, v, dO) where products in the kernels over- or underflowed
    'v_large_dO_small': (None, 2.0 ** -10, 2.0 ** 10, 2.0 ** 120, 2.0 ** -120),   # dO scaled to 1 alone: dQ = inf
    'tau_q_k_small': (2.0 ** -64, 2.0 ** -63, 2.0 ** -63, 2.0 ** -60, 1.0),       # e ignored τ: dQ, dK = 0
    'tau_k_small': (2.0 ** -60, 1.0, 2.0 ** -60, 2.0 ** -60, 1.0),                # dQ = τ·dS·k = 0
    'tau_k_v_small': (2.0 ** -30, 1.0, 2.0 ** -64, 2.0 ** -64, 1.0),
    'tau_huge': (2.0 ** 64, 2.0 ** -128, 2.0 ** 62, 2.0 ** 60, 2.0 ** -100),
}


# float32 variants only where every input is a normal float32 number and so are the true gradients: not
# 'v_large_dO_small' and 'tau_huge' (dO·2⁻¹²⁰, q·2⁻¹²⁸), not 'tau_q_k_small' (dQ = τ·dS·k ~ 2⁻⁶⁴·2⁻⁶³/N is subnormal)
F32_CASES = ['tau_k_small', 'tau_k_v_small']


@pytest.mark.parametrize('case, dtype', [(c, torch.float64) for c in RECHECK] + [(c, torch.float32) for c in F32_CASES])
def test_products_inside_the_kernels_stay_in_range(case, dtype):
    """Every factor inside [2⁻⁶⁴, 2⁶⁴] but a product of them (τ·dS·k, dO·vᵀ) outside float32's range: the rescaled
    path normalises τ, v and the balance of q and k, so the gradients are within the bound (float64; float32 inputs
    where they are float32 numbers)."""
    tau, sq, sk, sv, sd = RECHECK[case]
    q, k, v, do, dl = _inputs(sq, sk, sv, seed=31)
    do = do * sd
    if dtype == torch.float32: q, k, v, do, dl = (t.float() for t in (q, k, v, do, dl))
    assert max(_check(q, k, v, do, dl, with_lse=True, scale=tau)) <= 1.0


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32])
def test_empty_batch_lse_dtype(dtype):
    "An empty batch returns L in the dtype a non-empty call would (float32 for 16-bit inputs), for both functions."
    x = torch.zeros(0, 2, 6, 4, dtype=dtype)
    assert flash_attention(x, x, x, return_lse=True, backend='cpu')[1].dtype == torch.float32
    assert neighborhood_attention(x, x, x, 3, return_lse=True, backend='cpu')[1].dtype == torch.float32


def test_nonfinite_incoming_gradient_propagates():
    """A NaN in dO reaches the gradients on the rescaled path as on the plain one (it is not mistaken for a zero dO):
    float32 inputs in range (the plain path) against float64 ones, v as is and v·2¹⁰⁰⁰ (both rescaled)."""
    q, k, v, do, _ = _inputs(1.0, 1.0, 1.0, seed=13)
    do[0, 0, 3, 1] = float('nan')
    counts = []
    for dt, sv in ((torch.float32, 1.0), (torch.float64, 1.0), (torch.float64, P2)):
        x = [q.to(dt).clone().requires_grad_(), k.to(dt).clone().requires_grad_(), (v.to(dt) * sv).requires_grad_()]
        assert (A._fit_float32(*x, 0.5) == A._Fit()) == (dt == torch.float32)
        flash_attention(*x, backend='cpu').backward(do.to(dt))
        counts.append([int(t.grad.isnan().sum()) for t in x])
    assert counts[0] == counts[1] == counts[2] and min(counts[0]) > 0, counts


@pytest.mark.parametrize('shape', [(0, 2, 6, 6, 4), (2, 0, 6, 6, 4), (0, 3, 7, 4)])
def test_neighborhood_attention_empty_batch_is_differentiable(shape):
    q = torch.zeros(*shape, dtype=torch.float64, requires_grad=True)
    o, lse = neighborhood_attention(q, q, q, 3, backend='cpu', return_lse=True)
    (o.sum() + lse.sum()).backward()
    assert o.shape == shape and lse.shape == shape[:-1] and q.grad.shape == shape and o.dtype == torch.float64


def test_heads_are_sliced_to_the_grid_limit():
    "`_by_heads` covers range(BH) in order with slices of at most _GRID_Y = 65535 (CUDA's gridDim.y)."
    assert A._GRID_Y == 65535
    s = A._by_heads(2 * 65535 + 3)
    assert [(x.start, x.stop) for x in s] == [(0, 65535), (65535, 131070), (131070, 131073)]
    assert A._by_heads(1) == [slice(0, 1)]


SIM = textwrap.dedent(r'''
    import os, torch
    assert os.environ.get('NUMBA_ENABLE_CUDASIM') == '1'
    import geobook.attention as A
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(1, 3, 16, 8, generator=g) for _ in range(4))
    def run(fn):
        x = [t.clone().requires_grad_() for t in (q, k, v)]
        o, lse = fn(*x)
        (o * do).sum().backward()
        return [o, lse] + [t.grad for t in x]
    fns = {'flash_causal': lambda *x: A.flash_attention(*x, causal=True, backend='cuda', return_lse=True),
           'na': lambda *x: A.neighborhood_attention(*x, 5, backend='cuda', return_lse=True)}
    calls, fwd, bwd = [], A._forward_impl, A._backward_impl
    A._forward_impl = lambda *a: calls.append(a[0].shape[0]) or fwd(*a)
    A._backward_impl = lambda *a: calls.append(a[0].shape[0]) or bwd(*a)
    for name, fn in fns.items():
        whole = run(fn)
        A._GRID_Y = 2                        # BH = 3: launches of 2 and 1 batch·heads
        sliced = run(fn)
        A._GRID_Y = 65535
        assert all(torch.equal(a, b) for a, b in zip(whole, sliced)), name
        print(name, 'equal', calls)
        calls.clear()
''')


def test_sliced_launches_give_the_same_bits_under_the_simulator():
    env = {**os.environ, 'NUMBA_ENABLE_CUDASIM': '1'}
    p = subprocess.run([sys.executable, '-c', SIM], capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    assert p.returncode == 0, p.stdout + p.stderr
    # BH per call: one forward and one backward of 3, then each again as 3 → 2 + 1
    assert p.stdout.splitlines() == [f'{n} equal [3, 3, 3, 2, 1, 3, 2, 1]' for n in ('flash_causal', 'na')], p.stdout


SIXTEEN = {                     # referee ch5s: 16-bit inputs outside [2⁻⁶⁴, 2⁶⁴] skipped every range check (silent errors)
    'bf16_tiny_tau': (torch.bfloat16, 1e25, 1e25, 1.0, 1e-50),    # τ read as float32 0: uniform attention, L = log N
    'bf16_huge_tau': (torch.bfloat16, 1e-20, 1e-20, 1.0, 1e40),   # τ read as float32 inf: L = −inf
    'bf16_huge_v': (torch.bfloat16, 1.0, 1.0, 2.0 ** 126, 0.5),   # Σ 2^(s−m) v overflowed: O = inf
    'fp16_zero_q_huge_tau': (torch.float16, 0.0, 1.0, 1.0, 1e39),  # L = −inf (true: log N)
}


@pytest.mark.parametrize('case', list(SIXTEEN))
def test_sixteen_bit_inputs_outside_the_range_are_rescaled(case):
    """16-bit inputs go through the same exact rescaling as float32 ones outside the kernels' range. Against float64 on
    the same (16-bit) inputs: O within its rounding to the dtype, u·|O| (u = 2⁻⁸ bfloat16, 2⁻¹¹ float16), plus the
    float32 kernels' error, bounded by 10⁻⁵·max|v| (the chapter measures a few 10⁻⁷); L (float32) within 10⁻⁵·(1 + |L|);
    each gradient entry within the float32 bound of `_check` (tol·bound) plus its rounding to the dtype, u·|g|, where
    the true gradient fits the dtype, else ±inf as the dtype's rounding of it."""
    dt, sq, sk, sv, tau = SIXTEEN[case]
    q, k, v, do, dl = _inputs(sq, sk, sv, seed=37, dtype=torch.float32)
    q, k, v = (t.to(dt) for t in (q, k, v))
    do = do.to(dt).float()                  # the gradient reaching o (a 16-bit tensor) is rounded to its dtype
    u = 2.0 ** -8 if dt == torch.bfloat16 else 2.0 ** -11
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    o, lse = flash_attention(*x, scale=tau, backend='cpu', return_lse=True)
    ((o.float() * do).sum() + (lse * dl).sum()).backward()
    r = [t.double().requires_grad_() for t in (q, k, v)]
    o2, L2, _ = _reference(*r, torch.ones(12, 12, dtype=torch.bool), tau)
    ((o2 * do.double()).sum() + (L2 * dl.double()).sum()).backward()
    assert o.dtype == dt and lse.dtype == torch.float32
    assert ((o.double() - o2).abs() <= u * o2.abs() + 1e-5 * float(r[2].abs().max())).all()
    assert ((lse.double() - L2).abs() <= 1e-5 * (1 + L2.abs())).all()
    qd, kd, vd, dod, P = r[0].detach(), r[1].detach(), r[2].detach(), do.double(), torch.softmax(
        tau * r[0].detach() @ r[1].detach().transpose(-1, -2), -1)
    M = ((dod.abs() @ vd.abs().transpose(-1, -2)).amax(-1) + (dod * o2.detach()).sum(-1).abs() + dl.double().abs())[..., None]
    bounds = (tau * (P * M) @ kd.abs(), tau * (P * M).transpose(-1, -2) @ qd.abs(), P.transpose(-1, -2) @ dod.abs())
    tol = (2 * 12 + 12 + 4 + 16) * U
    for t, r_, b in zip(x, r, bounds):
        g = r_.grad
        fits = g.abs() <= torch.finfo(dt).max
        assert (t.grad.double()[~fits].abs() == float('inf')).all()
        assert ((t.grad.double() - g).abs() <= tol * b + u * g.abs())[fits].all()


def test_float32_large_v_takes_the_rescaled_path():
    """float32 v = 2¹²⁴ with dO ~ 1: the forward's sums fit float32 but the backward's dP = dO·vᵀ (D_v = 64 products)
    overflowed on the plain path (NaN dQ, dK: referee ch5s). max|v| > 2⁶⁴ now takes the rescaled path: within the bound."""
    q, k, v, do, dl = _inputs(1.0, 1.0, 2.0 ** 124, seed=41, N=4, D=64, dtype=torch.float32)
    assert A._fit_float32(q, k, v, 0.125).ev == A._top(float(v.abs().max()))
    assert max(_check(q, k, v, do, dl)) <= 1.0


def test_score_bound_in_logs():
    """τ·D·max|q|·max|k| is compared in logs: τ = 10¹⁶⁰, q ~ 10¹⁶⁰, k ~ 10⁻³⁰⁰ (scores ~ 10²⁰) was refused because the
    product overflowed float64 on the way; scores beyond float32 are still refused."""
    q, k, v, _, _ = _inputs(1e160, 1e-300, 1.0, seed=43)
    o = flash_attention(q, k, v, scale=1e160, backend='cpu')
    o2, _, _ = _reference(q, k * 1e160, v, torch.ones(12, 12, dtype=torch.bool), 1.0)   # τ·q would overflow float64
    assert float((o - o2).abs().max()) <= 1e-5 * float(v.abs().max())
    with pytest.raises(ValueError, match='beyond float32 range'):
        flash_attention(q, k * 1e300, v, scale=1e160, backend='cpu')
