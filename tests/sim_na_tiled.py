"""Chapter 5's tiled neighborhood-attention kernels on 2-D patches, under Numba's CUDA simulator (run by
tests/test_na_tiled.py in a process of its own: NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported). Tolerances as in tests/test_attention_cudasim.py for the tiled kernels: float32 arithmetic
against a float64 reference, N ≤ 120, D ≤ 16 (one case D = 70, padded to 72, for the 4×8 and 2×8 patches of
D_p > 64), unit-variance inputs: errors ~1e-6, allowed 2e-5 on O and L, 1e-4 on
dQ, dK, dV (absolute)."""
import os
os.environ.setdefault('NUMBA_ENABLE_CUDASIM', '1')
import math
import numpy as np
import pytest
import torch
import numba
assert numba.core.config.ENABLE_CUDASIM, 'set NUMBA_ENABLE_CUDASIM=1 before numba is imported'
from geobook.attention import neighborhood_attention, neighborhood_attention_reference
from geobook.attention import (_Mask, _na_plan, _na_forward_tiled, _na_backward_tiled, _LN2, _NEG, _NA_TILED,
                               _na_fwd_tiled, _launch_cuda, _NT, _LOG2E, _geometry)

TOL_O, TOL_G = 2e-5, 1e-4

def _mask(dims, ks, dil, cz):
    "The chapter's 'window' mask (1-D problems as an X = 1 grid)."
    if len(dims) == 1: dims, ks, dil, cz = (1,) + dims, (1,) + ks, (1,) + dil, (False,) + cz
    return _Mask('window', 0, tuple(dims), tuple(ks), tuple(dil), tuple(map(bool, cz)))

def _inputs(B, H, dims, D, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, *dims, D, generator=g) for _ in range(4)] + [torch.randn(B, H, *dims, generator=g)]

def _lse(ml):
    return ((ml[0].double() + ml[1].double()) * _LN2)

def _run(dims, ks, dil, cz, D=8, B=1, H=2, seed=0, dtype=torch.float32, grads=True):
    "Errors of the tiled kernels against neighborhood_attention_reference in float64 (gradients by autograd)."
    q, k, v, do, dl = _inputs(B, H, dims, D, seed)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    scale = 1 / math.sqrt(D)
    mask = _mask(dims, ks, dil, cz)
    N = math.prod(dims)
    flat = lambda t: t.reshape(B * H, N, t.shape[-1]).contiguous()
    o, ml = _na_forward_tiled(flat(q), flat(k), flat(v), scale, mask)
    q2, k2, v2 = (t.double().requires_grad_() for t in (q, k, v))
    o2, lse2 = neighborhood_attention_reference(q2, k2, v2, ks, dil, cz, scale=scale, return_lse=True)
    out = {'o': float((o.double() - flat(o2.detach())).abs().max()),
           'lse': float((_lse(ml) - lse2.detach().reshape(B * H, N)).abs().max())}
    if grads:
        ((o2 * do.double()).sum() + (lse2 * dl.double()).sum()).backward()
        delta = ((flat(do) * o).sum(-1) - dl.reshape(B * H, N)).float().contiguous()   # Δ = rowsum(dO∘O) − dL
        dq, dk, dv = _na_backward_tiled(flat(q), flat(k), flat(v), flat(do), ml, delta, scale, mask)
        for name, a, b in (('dq', dq, q2.grad), ('dk', dk, k2.grad), ('dv', dv, v2.grad)):
            out[name] = float((a.double() - flat(b)).abs().max())
    return out

CASES = {   # dims, kernel, dilation, causal, D
    '1d':             ((40,), (5,), (1,), (False,), 8),
    '1d_dil3':        ((50,), (7,), (3,), (False,), 8),
    '1d_causal_dil2': ((45,), (5,), (2,), (True,), 8),
    '2d':             ((12, 10), (3, 5), (1, 1), (False, False), 8),
    '2d_dil2':        ((12, 10), (5, 3), (2, 2), (False, False), 8),
    '2d_dil3_1':      ((11, 9), (3, 3), (3, 1), (False, False), 8),
    '2d_causal_x':    ((9, 10), (3, 5), (1, 2), (True, False), 8),
    '2d_causal_xy':   ((10, 9), (5, 3), (2, 1), (True, True), 8),
    '2d_d12':         ((9, 8), (3, 5), (2, 1), (False, False), 12),
    '2d_d16_causal_y':((10, 10), (3, 3), (1, 3), (False, True), 16),
    '2d_d70':         ((9, 10), (3, 5), (2, 1), (True, False), 70),   # D_p = 72: 4×8 forward, 2×8 backward patches
    '2d_n_by_1':      ((37, 1), (5, 1), (2, 1), (False, False), 8),   # an N×1 grid: 64×1 patches (a referee's case)
    '2d_k_is_l':      ((7, 9), (7, 3), (1, 3), (False, False), 8),    # k = X and k·δ = Y: every window the whole axis
}

@pytest.mark.parametrize('case', list(CASES))
def test_forward_backward_match_reference(case):
    dims, ks, dil, cz, D = CASES[case]
    r = _run(dims, ks, dil, cz, D=D, seed=len(case))
    print(case, r)
    assert r['o'] < TOL_O and r['lse'] < TOL_O, r
    assert max(r['dq'], r['dk'], r['dv']) < TOL_G, r

def test_half_inputs_backward():
    "float16 inputs through the backward kernels too (read as they are, float32 gradients) against float64."
    r = _run((9, 10), (3, 5), (2, 1), (False, True), D=8, seed=6, dtype=torch.float16)
    assert r['o'] < TOL_O and r['lse'] < TOL_O and max(r['dq'], r['dk'], r['dv']) < TOL_G, r


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_forward(dtype):
    "float16 / bfloat16 inputs read as they are: the float64 answer on the same rounded values, to float32 rounding."
    r = _run((9, 10), (3, 5), (2, 1), (False, True), D=8, seed=5, dtype=dtype, grads=False)
    print(dtype, r)
    assert r['o'] < TOL_O and r['lse'] < TOL_O, r
    assert any(key[2] == str(dtype).split('.')[-1] for key in _NA_TILED)

def test_rows_without_key():
    """A legal window always holds ≥ 1 key (k·δ ≤ L; a causal window holds its own position), so rows with no key occur
    only as patch slots past the grid's edge (not written). To run the no-key path on real rows we launch the kernel
    with the window count of x = 3 set to 0: those rows get O = 0, m = _NEG, log₂ ℓ = 0 (as the tiled flash kernels
    write them), and the other rows still match the reference."""
    dims, ks, dil, cz, D = (9, 10), (3, 5), (2, 1), (False, True), 8
    mask = _mask(dims, ks, dil, cz)
    P = _na_plan(mask, 64)
    assert (P.tabx[1] >= 1).all() and (P.taby[1] >= 1).all()
    assert (P.qplan[:, 2] * P.qplan[:, 7] < 64).any()          # ragged patches present
    tabx = P.tabx.copy(); tabx[1, 3] = 0
    q, k, v, _, _ = _inputs(1, 2, dims, D, 7)
    flat = lambda t: t.reshape(2, 90, D).contiguous()
    o = torch.full((2, 90, D), 7.0); ml = torch.full((2, 2, 90), 7.0)
    _launch_cuda(_na_fwd_tiled(D, False), (len(P.qplan), 2), _NT, flat(q), flat(k), flat(v), o, ml[0], ml[1],
                 np.float32(_LOG2E / math.sqrt(D)), P.qplan, tabx, P.taby, *_geometry(mask, 64))
    dead = torch.zeros(9, 10, dtype=torch.bool); dead[3] = True; dead = dead.reshape(-1)
    assert (o[:, dead] == 0).all() and (ml[0][:, dead] == _NEG).all() and (ml[1][:, dead] == 0).all()
    o2 = neighborhood_attention_reference(q.double(), k.double(), v.double(), ks, dil, cz, scale=1 / math.sqrt(D))
    assert float((o[:, ~dead].double() - flat(o2)[:, ~dead]).abs().max()) < TOL_O

def test_agrees_with_simple_kernel():
    "Tiled and simple (1-D range) neighborhood forward, both float32 from the same inputs: equal to float32 rounding."
    q, k, v, _, _ = _inputs(1, 2, (12, 10), 8, 11)
    kw = dict(kernel_size=(3, 5), dilation=(2, 1), causal=(False, True), scale=0.3)
    import geobook.attention as A
    A._TILED_FORWARD = False                                    # the simple kernel, as before the tiled ones
    try: o1 = neighborhood_attention(q, k, v, backend='cuda', **kw)
    finally: A._TILED_FORWARD = True
    o2, _ = _na_forward_tiled(q.reshape(2, 120, 8), k.reshape(2, 120, 8), v.reshape(2, 120, 8), 0.3,
                              _mask((12, 10), (3, 5), (2, 1), (False, True)))
    err = float((o1.reshape(2, 120, 8) - o2).abs().max())
    print('tiled vs simple', err)
    assert err < 2e-6
