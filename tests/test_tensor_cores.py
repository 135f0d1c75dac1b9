"""Chapter 5's tensor-core forward, checked without a GPU (the simulator cannot run linked CUDA C++).

1. Offline compilation (needs the `ptx` extra: numba-cuda[cu13] with NVRTC and nvJitLink, and nvdisasm or cuobjdump):
   every tensor-core kernel (attention forward and GEMM in bfloat16 and float16, GEMM and attention forward through
   TF32 and 3xTF32, the latter in both variants: Q tile in shared memory or Q in registers) is
   compiled for sm_80 and sm_90 as `cuda.jit(lto=True)` would on a GPU, by `geobook.attention._mma_offline_facts` — the
   two compute capabilities in two processes side by side, once per test session (a module-scoped fixture). Asserted:
   the linked PTX holds the mma.sync instructions and no call (the CUDA C++ helper was inlined; a control shows the call
   in the unlinked PTX), the SASS as many HMMA as the PTX has mma.sync (per key tile: 64 in the 16-bit forward, 2·B_k
   in the TF32 forward, 3 times that in 3xTF32) and no local
   memory, ptxas a 0-byte stack frame, no spills and ≤ 128 registers (the launch bounds' cap).
2. The NumPy emulator (`_emulate_gemm`, `_emulate_flash_fwd`: the kernels' own fragment functions run lane by lane,
   the mma instruction emulated from the PTX ISA's table) against float64 A @ B and softmax attention on ragged shapes,
   and two negative controls: a loader with two registers swapped must fail the same comparison.
   The TF32 forward's emulator (`_emulate_flash_fwd_tf32`) against float64 attention of the same float32 inputs
   within the derived bound `_tf32_bounds`, and negative controls (P without the key relabelling, V's rows unrelabelled).
3. The dispatch: the first-call check and the module switch, with stand-ins for the kernels (any device); the
   fp32_precision opt-in of flash_attention.
"""
import json, os, re, subprocess, sys, warnings
import numpy as np
import pytest
import torch

import geobook.attention as A

CCS = ((8, 0), (9, 0))
SLOW_PATH = re.compile(r'__cuda_sm20_(rcp|div)_rn_f32_slowpath')   # ptxas's own IEEE-division slow path


def _toolchain_missing():
    "Why the offline compilation cannot run here (a string), or None."
    try:
        import cuda.bindings.nvjitlink  # noqa: F401
        from numba.cuda.cudadrv import nvrtc  # noqa: F401
    except ImportError as e:
        return f'nvJitLink/NVRTC missing ({e}): pip install "geobook[ptx]"'
    if A._nvidia_tool('nvdisasm') is None and A._nvidia_tool('cuobjdump') is None:
        return 'neither nvdisasm nor cuobjdump found: pip install "geobook[ptx]" (nvidia-cuda-nvdisasm)'
    return None


@pytest.fixture(scope='module')
def facts():
    why = _toolchain_missing()
    if why: pytest.skip(why)
    code = ('import json, sys; from geobook.attention import _mma_offline_facts as f; '
            'print("RESULT" + json.dumps(f((int(sys.argv[1]), int(sys.argv[2])))))')
    env = {k: v for k, v in os.environ.items() if k != 'NUMBA_ENABLE_CUDASIM'}
    procs = [subprocess.Popen([sys.executable, '-c', code, str(a), str(b)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for a, b in CCS]
    out = {}
    for p in procs:
        so, se = p.communicate(timeout=900)
        assert p.returncode == 0, f'offline compilation failed:\n{se[-4000:]}'
        out.update(json.loads(next(ln for ln in so.splitlines() if ln.startswith('RESULT'))[6:]))
    return out


KERNELS = [f'{kind}_{dt}_sm{a}{b}' for kind, dt in A._MMA_OFFLINE_KERNELS for a, b in CCS]


def _kernel_kind(name):
    """(base kind, dtype, keys per tile B_k, head dimension D) of an offline-facts name such as
    'fwd_qreg_causal_tf32_sm90' (B_k None for a GEMM); base 'gemm', 'fwd' or 'fwd_qreg' (A._mma_variant)."""
    kind, dt = next((k, d) for k, d in A._MMA_OFFLINE_KERNELS if name.startswith(f'{k}_{d}_sm'))
    base, D, _ = A._mma_variant(kind)
    if base == 'gemm': return base, dt, None, None
    if base.startswith('bwd'): return base, dt, None, D
    return base, dt, (A._TF32_BK[dt, base == 'fwd_qreg'] if dt in ('tf32', '3xtf32') else A._MMA_BK_D[D]), D


@pytest.mark.parametrize('name', KERNELS)
def test_helper_inlined_and_mma_in_sass(facts, name):
    f = facts[name]
    assert f['ltoir_pieces'] == 2, f                                # the kernel and attention_mma.cu (NVRTC)
    assert f['ptx_calls'] == 0 and f['ptx_local'] == 0, f           # inlined: no call, no local memory in PTX
    kind, dt, bk, _ = _kernel_kind(name)
    x3 = 3 if dt == '3xtf32' else 1
    # mma per key tile and warp (16-bit forward: QKᵀ 8 n-tiles × 4 k-steps + PV 8 × 4) or per k-step (GEMM); TF32
    # forwards: PV unrolled (8 n-tiles × B_k/8 k-steps) and QKᵀ a multiple of B_k/8 (its loop over the 8 k-steps of
    # head dimensions may stay a loop); 3xTF32: three of each
    if kind.startswith('bwd'):      # per k-step of 16 keys (dQ: S, dP, dS K) or queries (dK/dV: Sᵀ, dPᵀ, dV, dK), 8 each
        step = {'bwd_dq': 24, 'bwd_dkdv': 32}[kind]          # the k-step loop kept (1 step) or unrolled over the tile
        assert f['ptx_mma'] in (step, step * {'bwd_dq': A._MMA_BK, 'bwd_dkdv': A._BWD_BQ}[kind] // 16), f
    elif kind == 'gemm' or dt in ('bfloat16', 'float16'):
        per_tile = x3 * (1 if kind == 'gemm' else 64)
        assert f['ptx_mma'] >= per_tile and f['ptx_mma'] % per_tile == 0, f
    else:
        assert f['ptx_mma'] >= x3 * (bk + bk // 8) and f['ptx_mma'] % (x3 * bk // 8) == 0, f
    assert f['sass_hmma'] == f['ptx_mma'], f                        # each mma.sync became one HMMA
    assert f['sass_ldl_stl'] == 0, f
    assert all(SLOW_PATH.search(c) for c in f['sass_calls']), f


@pytest.mark.parametrize('name', KERNELS)
def test_ptxas_resources(facts, name):
    f = facts[name]
    assert f['stack'] == 0 and f['spill_st'] == 0 and f['spill_ld'] == 0, f
    assert 0 < f['regs'] <= 128, f
    kind, dt, bk, D = _kernel_kind(name)
    if kind.startswith('bwd'):     # dQ: Q, dO, K, V tiles + Kᵀ; dK/dV: K, V, Q, dO (32 rows), Qᵀ, dOᵀ, 3 × 32 statistics
        assert f['smem'] == A._mma_bwd_smem(kind[4:]) <= A._SMEM_MAX, f
        assert f['sass_ex2'] >= 8, f                        # P = 2^x per score: 8 per lane per k-step
        return
    if kind != 'gemm' and dt in ('bfloat16', 'float16'):   # Q (64 rows) and K (B_k keys) tiles of D/2 + 4 words, Vᵀ
        assert f['smem'] == 4 * ((A._MMA_BQ + bk) * (D // 2 + 4) + D * (bk // 2 + 4)) <= A._SMEM_MAX, f   # D × B_k/2+4
        if D == 64: assert f['smem'] == 4 * (A._MMA_BQ * A._MMA_KS + A._MMA_BK * A._MMA_KS + A._MMA_D * A._MMA_VT), f
    elif kind != 'gemm':           # float32 tiles of 68: Q (64 rows; with Q in registers its placeholder is dropped), K, V
        assert f['smem'] == 4 * A._TF32_LD * ((0 if kind == 'fwd_qreg' else A._MMA_BQ) + 2 * bk) <= A._SMEM_MAX, f
    if kind != 'gemm':             # row max/sum by shuffles; exp2 per score: B_k/2 per lane per tile, + 2 (α)
        assert f['sass_shfl'] >= 6 and f['sass_ex2'] >= bk // 2, f


@pytest.mark.parametrize('cc', CCS)
def test_call_detector_control(facts, cc):
    "Unlinked, the helper is an external call: the regex that finds no call after linking does find it here."
    f = facts[f'control_unlinked_gemm_bfloat16_sm{cc[0]}{cc[1]}']
    assert f['ptx_calls'] >= 1 and f['ptx_mma'] == 0, f


# ---------------------------------------------------------------- the emulator
L = A._MMA_LAYOUT


def test_ptx_table_spot_checks():
    "Entries of the PTX ISA's m16n8k16 and m16n8k8 (.tf32) fragment figures, written out by hand."
    assert [(L['AR'][0, i], L['AC'][0, i]) for i in range(8)] == [(0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9),
                                                                  (8, 8), (8, 9)]
    assert [(L['BR'][5, i], L['BC'][5, i]) for i in range(4)] == [(2, 1), (3, 1), (10, 1), (11, 1)]
    assert [(L['CR'][5, i], L['CC'][5, i]) for i in range(4)] == [(1, 2), (1, 3), (9, 2), (9, 3)]
    assert (L['CR'][31, 3], L['CC'][31, 3]) == (15, 7)
    assert [(L['AR8'][6, i], L['AC8'][6, i]) for i in range(4)] == [(1, 2), (9, 2), (1, 6), (9, 6)]
    assert [(L['BR8'][6, i], L['BC8'][6, i]) for i in range(2)] == [(2, 1), (6, 1)]
    for r, c, n in (('AR', 'AC', 256), ('BR', 'BC', 128), ('CR', 'CC', 128), ('AR8', 'AC8', 128), ('BR8', 'BC8', 64)):
        assert len(set(zip(L[r].ravel(), L[c].ravel()))) == n       # every element owned exactly once


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_mma_emulator_alone(dtype):
    "The emulated instruction on registers built straight from the table computes A @ B + C (float64 of 16-bit values)."
    rng = np.random.default_rng(0)
    A16, B16 = A._MMA_ENCODE[dtype](rng.standard_normal((16, 16))), A._MMA_ENCODE[dtype](rng.standard_normal((16, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32)
    ae, be = A16[L['AR'], L['AC']].astype(np.uint32), B16[L['BR'], L['BC']].astype(np.uint32)
    d = A._emu_mma(ae[:, 0::2] | (ae[:, 1::2] << 16), be[:, 0::2] | (be[:, 1::2] << 16), C[L['CR'], L['CC']], dtype)
    D = np.zeros((16, 8), np.float32)
    D[L['CR'], L['CC']] = d
    dec = A._MMA_DECODE[dtype]
    np.testing.assert_allclose(D, dec(A16).astype(np.float64) @ dec(B16) + C, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
@pytest.mark.parametrize('shape', [(16, 16, 8), (48, 64, 24), (40, 56, 20), (1, 5, 3)])
def test_gemm_emulation_matches_matmul(dtype, shape):
    """The GEMM kernel's loads + emulated mma + its stores reproduce A @ B of the 16-bit values, ragged M, K, N included:
    products exact, sums of ≤ 64 terms in float32 (≤ 1e-5 at these sizes)."""
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A16, B16 = A._MMA_ENCODE[dtype](rng.standard_normal((M, K))), A._MMA_ENCODE[dtype](rng.standard_normal((K, N)))
    C = A._emulate_gemm(A16, B16, dtype)
    dec = A._MMA_DECODE[dtype]
    assert not np.isnan(C).any()
    np.testing.assert_allclose(C, dec(A16).astype(np.float64) @ dec(B16).astype(np.float64), rtol=1e-5, atol=1e-5)


def test_wrong_a_loader_is_caught():
    "Negative control: an A loader that swaps registers a1 and a2 (a plausible slip) fails the same comparison."
    rng = np.random.default_rng(1)
    A16, B16 = A._bf16_bits(rng.standard_normal((16, 32))), A._bf16_bits(rng.standard_normal((32, 8)))
    h = A._emu_helpers('bfloat16')
    good = h['_a_frag']
    h['_a_frag'] = lambda *a: (lambda r: (r[0], r[2], r[1], r[3]))(good(*a))
    C = A._emulate_gemm(A16, B16, 'bfloat16', helpers=h)
    assert np.abs(C - A._MMA_DECODE['bfloat16'](A16).astype(np.float64) @ A._MMA_DECODE['bfloat16'](B16)).max() > 0.1


@pytest.mark.parametrize('shape', [(16, 8, 8), (48, 40, 24), (37, 21, 13)])
def test_gemm_tf32_emulation(shape):
    """TF32: equals the float64 product of the TF32-rounded inputs (the indexing is right), and differs visibly but
    within TF32's error from the exact product; 3xTF32 is within float32-class error of the exact product."""
    M, K, N = shape
    rng = np.random.default_rng(K)
    X, Y = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    exact = X.astype(np.float64) @ Y.astype(np.float64)
    c1 = A._emulate_gemm(X, Y, 'tf32')
    np.testing.assert_allclose(c1, A._tf32_round(X).astype(np.float64) @ A._tf32_round(Y), rtol=1e-5, atol=1e-5)
    assert np.abs(c1 - exact).max() > 1e-5
    np.testing.assert_allclose(c1, exact, atol=2e-3 * np.sqrt(K))
    np.testing.assert_allclose(A._emulate_gemm(X, Y, '3xtf32'), exact, rtol=1e-5, atol=1e-5)


def _reference(q16, k16, v16, dtype, scale):
    q, k, v = (torch.from_numpy(A._MMA_DECODE[dtype](x)).double() for x in (q16, k16, v16))
    return A.attention_reference(q, k, v, scale=scale, return_lse=True), float(v.abs().max())


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
@pytest.mark.parametrize('bh,nq,nk', [(1, 80, 100), (2, 16, 64), (1, 1, 1), (1, 70, 129)])
def test_flash_fwd_emulation_matches_softmax(dtype, bh, nq, nk):
    """The attention kernel, emulated lane by lane, against float64 softmax attention of the same 16-bit inputs:
    L = (m + log₂ ℓ)·ln 2 to float32 rounding, O within _mma_o_bound (P rounded to 16 bits before P V); ragged N_q, N_k
    (partial Q blocks and K tiles, one key, more than two K tiles)."""
    rng = np.random.default_rng(nq * 1000 + nk)
    q16, k16, v16 = (A._MMA_ENCODE[dtype](rng.standard_normal((bh, n, 64))) for n in (nq, nk, nk))
    o, m, lam = A._emulate_flash_fwd(q16, k16, v16, 0.125, dtype)
    (oref, lref), vmax = _reference(q16, k16, v16, dtype, 0.125)
    assert not np.isnan(o).any() and not np.isnan(m).any()
    np.testing.assert_allclose((m + lam) * A._LN2, lref.numpy(), rtol=1e-5, atol=1e-5)
    assert np.abs(o - oref.numpy()).max() <= A._mma_o_bound(getattr(torch, dtype), vmax, nk)


def test_flash_fwd_wrong_v_fragment_is_caught():
    "Negative control for the attention path: a V loader that swaps b0 and b1 (keys 2t.. and 2t+8..) is detected."
    rng = np.random.default_rng(3)
    q16, k16, v16 = (A._bf16_bits(rng.standard_normal((1, n, 64))) for n in (16, 64, 64))
    h = A._emu_helpers('bfloat16')
    good = h['_vt_b_frag']
    h['_vt_b_frag'] = lambda *a: good(*a)[::-1]
    o, _, _ = A._emulate_flash_fwd(q16, k16, v16, 0.125, 'bfloat16', helpers=h)
    (oref, _), vmax = _reference(q16, k16, v16, 'bfloat16', 0.125)
    assert np.abs(o - oref.numpy()).max() > 10 * A._mma_o_bound(torch.bfloat16, vmax, 64)


def _masked_reference(q, k, v, scale, causal):
    """float64 softmax attention with the bottom-right causal mask (query i sees key j iff j ≤ i + N_k − N_q): O (0 on
    rows without a key) and L (−∞ there)."""
    nq, nk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq) if causal else torch.ones(nq, nk, dtype=torch.bool)
    s = (q @ k.transpose(-1, -2) * scale).masked_fill(~allowed, float('-inf'))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v, torch.logsumexp(s, -1)


def _check_masked(o, m, lam, oref, lref, obound, lbound):
    "O within obound, L within lbound on rows with keys; rows without keys: O = 0, m = _NEG, log₂ ℓ = 0 exactly."
    assert not np.isnan(o).any() and not np.isnan(m).any() and not np.isnan(lam).any()
    none = np.isneginf(lref.numpy())
    assert (m[none] == np.float32(A._NEG)).all() and (lam[none] == 0).all() and (o[none] == 0).all()
    assert (m[~none] > A._NEG / 2).all()
    el = np.abs((m[~none].astype(np.float64) + lam[~none]) * A._LN2 - lref.numpy()[~none]).max(initial=0.0)
    eo = np.abs(o - oref.numpy()).max()
    assert el <= lbound and eo <= obound, (el, lbound, eo, obound)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
@pytest.mark.parametrize('D,causal,nq,nk', [(64, True, 80, 100), (64, True, 100, 37), (64, True, 130, 130),
                                            (128, False, 20, 70), (128, True, 70, 130), (128, True, 100, 37)])
def test_flash_fwd_emulation_causal_and_d128(dtype, D, causal, nq, nk):
    """The 16-bit forward with the causal mask (bottom-right aligned; N_q > N_k leaves rows with no key) and at D = 128
    (32-key tiles), emulated lane by lane, against float64 masked softmax attention of the same 16-bit inputs: L to
    float32 rounding (1e-5), O within _mma_o_bound; rows without keys exactly O = 0, m = _NEG, log₂ ℓ = 0."""
    rng = np.random.default_rng(nq * 1000 + nk + D)
    q16, k16, v16 = (A._MMA_ENCODE[dtype](rng.standard_normal((1, n, D))) for n in (nq, nk, nk))
    o, m, lam = A._emulate_flash_fwd(q16, k16, v16, 0.125, dtype, causal=causal)
    q, k, v = (torch.from_numpy(A._MMA_DECODE[dtype](x)).double() for x in (q16, k16, v16))
    oref, lref = _masked_reference(q, k, v, 0.125, causal)
    _check_masked(o, m, lam, oref, lref, A._mma_o_bound(getattr(torch, dtype), float(v.abs().max()), nk), 1e-5)


@pytest.mark.parametrize('wrong', ['diagonal_unmasked', 'key_end_of_first_row'])
def test_causal_tile_plan_errors_are_caught(wrong):
    """Negative controls for the causal plan: a _tile_masked that masks only the last tile (not the diagonal's), or a
    _key_end taken from the block's first row instead of its last (later rows lose whole tiles of keys), fail the
    same comparison (O or L)."""
    rng = np.random.default_rng(7)
    q16, k16, v16 = (A._bf16_bits(rng.standard_normal((1, n, 64))) for n in (70, 130, 130))
    h = A._emu_helpers('bfloat16')
    if wrong == 'diagonal_unmasked':
        h['_tile_masked'] = lambda k0, bk, Nk, q0, off, causal: k0 + bk > Nk
    else:
        h['_key_end'] = lambda q0, Nk, off, causal: min(Nk, q0 + 1 + off)
    o, m, lam = A._emulate_flash_fwd(q16, k16, v16, 0.125, 'bfloat16', helpers=h, causal=True)
    q, k, v = (torch.from_numpy(A._MMA_DECODE['bfloat16'](x)).double() for x in (q16, k16, v16))
    oref, lref = _masked_reference(q, k, v, 0.125, True)
    with pytest.raises(AssertionError):
        _check_masked(o, m, lam, oref, lref, A._mma_o_bound(torch.bfloat16, float(v.abs().max()), 130), 1e-5)


@pytest.mark.parametrize('dtype,qreg', list(A._TF32_BK))
@pytest.mark.parametrize('nq,nk', [(80, 100), (100, 37), (70, 130)])
def test_flash_fwd_tf32_emulation_causal(dtype, qreg, nq, nk):
    """The TF32 / 3xTF32 forwards with the causal mask, emulated, against float64 masked attention of the same float32
    inputs within _tf32_bounds (the bound of the full mask holds row by row: a row's keys are a subset); rows without
    keys exactly 0 / _NEG / 0."""
    rng = np.random.default_rng(nq * 1000 + nk)
    q, k, v = (rng.standard_normal((1, n, 64)).astype(np.float32) for n in (nq, nk, nk))
    o, m, lam = A._emulate_flash_fwd_tf32(q, k, v, 0.125, dtype, qreg, causal=True)
    oref, lref = _masked_reference(*(torch.from_numpy(x).double() for x in (q, k, v)), 0.125, True)
    bo, bl = A._tf32_bounds(q, k, v, 0.125, dtype)
    _check_masked(o, m, lam, oref, lref, bo, bl)


# ---------------------------------------------------------------- dispatch
def _stand_in(shift=0.0):
    def fwd(q, k, v, s):
        o, lse = A.attention_reference(q.float(), k.float(), v.float(), scale=s, return_lse=True)
        return o + shift, torch.stack([lse * A._LOG2E, torch.zeros_like(lse)])
    return fwd


def test_first_call_check_accepts_agreement_and_warns_once_on_failure():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert A._mma_first_call_check('cpu', torch.float16, _stand_in(), _stand_in()) is True
        shifted = A._mma_first_call_check('cpu', torch.bfloat16, _stand_in(0.05), _stand_in())
        nan = A._mma_first_call_check('cpu', torch.bfloat16, _stand_in(float('nan')), _stand_in())
        broken = A._mma_first_call_check('cpu', torch.bfloat16, lambda *a: 1 / 0, _stand_in())
    assert 'disagrees' in shifted and 'disagrees' in nan and 'ZeroDivisionError' in broken
    assert len(caught) == 3 and all(issubclass(w.category, RuntimeWarning) for w in caught)
    # the tolerance is the derived bound (+1e-4): a shift of 0.9× the bound passes, 1.1× the bound + 1e-4 does not
    g = torch.Generator().manual_seed(0)
    vmax = float([torch.randn(2, n, 64, generator=g) for n in (80, 100, 100)][2].to(torch.bfloat16).abs().max())
    bound = A._mma_o_bound(torch.bfloat16, vmax, 100)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter('always')
        assert A._mma_first_call_check('cpu', torch.bfloat16, _stand_in(0.9 * bound), _stand_in()) is True
        assert A._mma_first_call_check('cpu', torch.bfloat16, _stand_in(1.1 * bound + 1e-4), _stand_in()) is not True


def test_use_mma_checks_once_per_device_and_dtype(monkeypatch):
    calls = []
    monkeypatch.setattr(A, '_mma_applies', lambda q, mask, precision='ieee': True)
    monkeypatch.setattr(A, '_forward_mma', lambda *a: (calls.append(1), _stand_in(0.05)(*a))[1])
    monkeypatch.setattr(A, '_forward_tiled', lambda q, k, v, s, mask: _stand_in()(q, k, v, s))
    monkeypatch.setattr(A, '_MMA_STATUS', {})
    q = torch.zeros(1, 4, 64, dtype=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert [A._use_mma(q, A._Mask('full')) for _ in range(3)] == [False] * 3
    assert len(calls) == 1 and len(caught) == 1 and 'bfloat16' in str(caught[0].message)
    monkeypatch.setattr(A, '_TENSOR_CORES', 'always')
    assert A._use_mma(q, A._Mask('full')) is True                    # forced: no check
    monkeypatch.setattr(A, '_TENSOR_CORES', 'never')
    monkeypatch.setattr(A, '_MMA_STATUS', {})
    assert A._use_mma(q, A._Mask('full')) is False and len(calls) == 1
    monkeypatch.setattr(A, '_TENSOR_CORES', 'sometimes')
    with pytest.raises(ValueError, match='_TENSOR_CORES'):
        A._use_mma(q, A._Mask('full'))


def test_tensor_cores_domain(monkeypatch):
    """On a (pretended) GPU of compute capability ≥ 8.0: 16-bit inputs with the full or causal mask and D_p = 64 or 128
    run on tensor cores; windowed masks, D_p of 48 or 96 (padding would waste a quarter or more), float32 without the
    opt-in and float64 do not; float32 with 'tf32'/'3xtf32' only at D_p = 64. Off a GPU or below sm_80: never."""
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'gpu')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    z = lambda D, dt=torch.bfloat16: torch.zeros(1, 4, D, dtype=dt)
    full, causal, window = A._Mask('full'), A._Mask('causal', off=3), A._Mask('window')
    for dt in (torch.bfloat16, torch.float16):
        for D, W in ((64, 64), (57, 64), (128, 128), (121, 128)):
            assert A._mma_applies(z(D, dt), full) and A._mma_applies(z(D, dt), causal) and A._mma_width(z(D, dt)) == W
        for D in (48, 96, 32):
            assert not A._mma_applies(z(D, dt), full) and A._mma_width(z(D, dt)) is None
        assert not A._mma_applies(z(64, dt), window)
    assert not A._mma_applies(z(64, torch.float32), full) and not A._mma_applies(z(64, torch.float64), full, 'tf32')
    for prec in ('tf32', '3xtf32'):
        assert A._mma_applies(z(64, torch.float32), full, prec) and A._mma_applies(z(64, torch.float32), causal, prec)
        assert not A._mma_applies(z(128, torch.float32), full, prec) and A._mma_dtype(z(64, torch.float32), prec) == prec
    assert [A._mma_kind(m_, w) for m_, w in ((full, 64), (causal, 64), (full, 128), (causal, 128))] == \
        ['fwd', 'fwd_causal', 'fwd_d128', 'fwd_d128_causal']
    assert A._mma_kind(causal, 64, 'fwd_qreg') == 'fwd_qreg_causal' and A._mma_variant('fwd_qreg_causal') == ('fwd_qreg', 64, True)
    with pytest.raises(ValueError, match='D = 64'):
        A._mma_fn('fwd_d128', 'tf32')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    assert not A._mma_applies(z(64), full)
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'sim')
    assert not A._mma_applies(z(64), full)


def test_use_mma_checks_each_kernel_once(monkeypatch):
    """The first-call check runs once per (device, dtype, kernel width, causal), on the kernel that would run: D = 128
    and causal variants get their own check, with the check problem of their own shape and mask."""
    seen = []
    def check(dev, dt, mma, plain, D=64, causal=False):
        nq, nk = A._mma_check_shape(causal)
        q = torch.zeros(1, nq, D, dtype=torch.bfloat16); k = torch.zeros(1, nk, D, dtype=torch.bfloat16)
        seen.append((dt, D, causal, plain(q, k, k, 0.125)))
        return True
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'gpu')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    monkeypatch.setattr(A, '_mma_first_call_check', check)
    monkeypatch.setattr(A, '_forward_tiled', lambda q, k, v, s, mask: (mask.kind, mask.off))
    monkeypatch.setattr(A, '_MMA_STATUS', {})
    monkeypatch.setattr(A, '_TENSOR_CORES', 'auto')
    for D in (64, 128, 64):
        for m_ in (A._Mask('full'), A._Mask('causal', off=5)):
            assert A._use_mma(torch.zeros(1, 4, D, dtype=torch.bfloat16), m_)
    assert [x[:3] for x in seen] == [(torch.bfloat16, 64, False), (torch.bfloat16, 64, True),
                                      (torch.bfloat16, 128, False), (torch.bfloat16, 128, True)]
    assert [x[3] for x in seen] == [('full', 20), ('causal', -20), ('full', 20), ('causal', -20)]   # the check's own off


def test_first_call_check_compares_rows_without_keys():
    """Causal check problem (N_q = 100 > N_k = 80): rows without a key have L = −∞ in both forwards, which counts as
    agreement (not NaN); a forward that gives such a row a finite L is rejected."""
    def masked(shift=0.0, break_row=False):
        def fwd(q, k, v, s):
            o, lse = _masked_reference(q.double(), k.double(), v.double(), s, True)
            m = (lse * A._LOG2E).float()
            m = torch.where(torch.isneginf(m), torch.full_like(m, A._NEG), m)
            if break_row: m[..., 0] = 0.0
            return (o + shift).float(), torch.stack([m, torch.zeros_like(m)])
        return fwd
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert A._mma_first_call_check('cpu', torch.bfloat16, masked(), masked(), 64, True) is True
        bad = A._mma_first_call_check('cpu', torch.bfloat16, masked(break_row=True), masked(), 128, True)
    assert 'disagrees' in bad and 'inf' in bad and len(caught) == 1
    assert 'bfloat16, D = 128, causal on cpu' in str(caught[0].message)


def test_simulator_never_dispatches_to_tensor_cores():
    """Under NUMBA_ENABLE_CUDASIM=1 a bfloat16 full forward with D = 64 runs the tiled kernel and matches float64; so does
    float32 with fp32_precision='tf32' (float32 accuracy: no TF32 rounding)."""
    code = r'''
import torch, geobook.attention as A
assert A._cuda_mode() == 'sim'
q, k, v = (torch.randn(1, 1, n, 64, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16) for n in (5, 9, 9))
assert not A._mma_applies(q[0], A._Mask('full'))
o = A.flash_attention(q, k, v, backend='cuda')
ref = A.attention_reference(q.double(), k.double(), v.double())
assert (o.double() - ref).abs().max() < 2 ** -7 * ref.abs().max(), (o, ref)
o32 = A.flash_attention(q.float(), k.float(), v.float(), backend='cuda', fp32_precision='tf32')   # float32: tiled too
assert (o32.double() - ref).abs().max() < 1e-5, (o32, ref)
assert A._MMA_KERNELS == {} and A._MMA_STATUS == {}
print('OK')
'''
    env = {**os.environ, 'NUMBA_ENABLE_CUDASIM': '1', 'GEOBOOK_NO_PROGRESS': '1'}
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0 and 'OK' in p.stdout, p.stderr[-3000:]


def test_cu_helper_is_package_data():
    "The helper ships inside the package (pyproject package-data) and defines the six functions the kernels declare."
    text = open(A._mma_cu_path()).read()
    for name in ('geobook_mma_bf16_16816', 'geobook_mma_f16_16816', 'geobook_pack_bf16x2', 'geobook_pack_f16x2',
                 'geobook_mma_tf32_1688', 'geobook_mma_3xtf32_1688'):
        assert f'extern "C" __device__ int {name}(' in text


# ---------------------------------------------------------------- float32 through TF32 tensor cores
def _reference32(q, k, v, scale):
    return A.attention_reference(*(torch.from_numpy(x).double() for x in (q, k, v)), scale=scale, return_lse=True)


@pytest.mark.parametrize('dtype,qreg', list(A._TF32_BK))
@pytest.mark.parametrize('bh,nq,nk,sd', [(1, 80, 100, 1.0), (2, 16, 64, 1.0), (1, 1, 1, 1.0), (1, 70, 129, 1.0),
                                         (1, 33, 40, 3.0)])
def test_flash_fwd_tf32_emulation_within_derived_bound(dtype, qreg, bh, nq, nk, sd):
    """The TF32 / 3xTF32 forward, emulated lane by lane (both variants), against float64 attention of the same float32
    inputs: O and L within _tf32_bounds (the derived worst case: operand rounding ρ, float32 sums, exp2), on ragged
    N_q ≠ N_k (partial Q blocks and key tiles of 32 or 64, one key, three tiles), and with peaked softmax rows (inputs
    of standard deviation 3). TF32 must also be visibly inexact (its error is TF32's, not float32's) and 3xTF32 at
    least 100 times closer."""
    rng = np.random.default_rng(nq * 1000 + nk)
    q, k, v = (sd * rng.standard_normal((bh, n, 64)).astype(np.float32) for n in (nq, nk, nk))
    o, m, lam = A._emulate_flash_fwd_tf32(q, k, v, 0.125, dtype, qreg)
    oref, lref = _reference32(q, k, v, 0.125)
    bo, bl = A._tf32_bounds(q, k, v, 0.125, dtype)
    assert not np.isnan(o).any() and not np.isnan(m).any() and not np.isnan(lam).any()
    eo, el = np.abs(o - oref.numpy()).max(), np.abs((m + lam) * A._LN2 - lref.numpy()).max()
    assert eo <= bo and el <= bl, (eo, bo, el, bl)
    if dtype == 'tf32' and nk > 1:
        assert eo > 1e-5, eo                                   # the inputs were rounded to TF32
    if dtype == '3xtf32' and nk > 1:
        o1, _, _ = A._emulate_flash_fwd_tf32(q, k, v, 0.125, 'tf32', qreg)
        assert eo < np.abs(o1 - oref.numpy()).max() / 100


def test_tf32_bound_is_derived_not_fitted():
    """_tf32_bounds from its formula: ρ = 2u + u² (TF32) and 3u² + 2u³ + 2u⁴ (3xTF32), u = 2⁻¹¹; for q = k = 0 the
    scores are exact (S_max = 0) and the bound is the P V part alone."""
    u = 2.0 ** -11
    assert A._tf32_rho('tf32') == 2 * u + u * u and A._tf32_rho('3xtf32') == 3 * u * u + 2 * u ** 3 + 2 * u ** 4
    z, v = np.zeros((1, 3, 64), np.float32), np.full((1, 5, 64), 2.0, np.float32)
    eps = 2.0 ** -21
    bo, bl = A._tf32_bounds(z, np.zeros((1, 5, 64), np.float32), v, 0.125, 'tf32')
    assert bo == pytest.approx((np.expm1(2 * eps) + A._tf32_rho('tf32') + A._gamma(34) + 5 * 2.0 ** -126) * 2.0, rel=1e-12)
    assert bl == pytest.approx(eps + A._gamma(12) + 2.0 ** -24 * np.log2(6), rel=1e-12)
    # S_max enters through ε: doubling q doubles S_max
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 4, 64)), rng.standard_normal((1, 6, 64))
    smax = 0.125 * (np.abs(q[0]) @ np.abs(k[0]).T).max()
    _, bl1 = A._tf32_bounds(q, k, np.ones((1, 6, 64)), 0.125, 'tf32')
    # D = 64: 8 chained m16n8k8 block FMAs lose ≤ 9·2⁻²³ each (Fasi et al. 2021), γ(9·64/8) = γ(72), + scale and shift
    assert bl1 == pytest.approx((A._tf32_rho('tf32') + A._gamma(74)) * smax + eps + A._gamma(14) + 2.0 ** -24 * np.log2(7))
    # only the two tensor-core float32 modes have a bound (referee ch5f: 'bf16' silently got 3xTF32's ρ)
    for bad in ('bf16', 'TF32', 'ieee'):
        with pytest.raises(ValueError, match='dtype'):
            A._tf32_bounds(q, k, np.ones((1, 6, 64)), 0.125, bad)


@pytest.mark.parametrize('wrong', ['p_unrelabelled', 'v_rows_unrelabelled'])
def test_flash_fwd_tf32_wrong_fragment_is_caught(wrong):
    """Negative controls: P's registers in the 16-bit order (c0, c1, c2, c3), or V's rows t, t+4 (the m16n8k8 table
    without the relabelling), give errors far beyond the derived bound."""
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, n, 64)).astype(np.float32) for n in (16, 64, 64))
    h = A._emu_helpers('tf32')
    if wrong == 'p_unrelabelled':
        h['_p_a_frag_tf32'] = lambda s, j: (s[4 * j], s[4 * j + 1], s[4 * j + 2], s[4 * j + 3])
    else:
        h['_v_b_frag_tf32'] = lambda Vs, j, n, lane: (Vs[8 * j + (lane & 3), 8 * n + (lane >> 2)],
                                                       Vs[8 * j + (lane & 3) + 4, 8 * n + (lane >> 2)])
    o, _, _ = A._emulate_flash_fwd_tf32(q, k, v, 0.125, 'tf32', helpers=h)
    oref, _ = _reference32(q, k, v, 0.125)
    assert np.abs(o - oref.numpy()).max() > 3 * A._tf32_bounds(q, k, v, 0.125, 'tf32')[0]


def test_tf32_relabelling_against_the_ptx_tables():
    "a = (c0, c2, c1, c3) is A with column κ holding key π(κ) = 2κ, 2(κ−4)+1; B's rows π(t), π(t+4) = 2t, 2t+1."
    pi = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    assert (L['CR'][:, [0, 2, 1, 3]] == L['AR8']).all() and (L['CC'][:, [0, 2, 1, 3]] == pi[L['AC8']]).all()
    t = np.arange(32) & 3
    assert (pi[L['BR8']] == np.stack([2 * t, 2 * t + 1], 1)).all()
    h = A._emu_helpers('tf32')
    S = np.arange(128, dtype=np.float32).reshape(16, 8)
    for lane in range(32):
        assert list(h['_p_a_frag_tf32'](S[L['CR'][lane], L['CC'][lane]], 0)) == list(S[L['AR8'][lane], pi[L['AC8'][lane]]])
        assert list(h['_v_b_frag_tf32'](S[:8], 0, 0, lane)) == list(S[:8][pi[L['BR8'][lane]], L['BC8'][lane]])


def test_3xtf32_with_q_in_registers_is_refused():
    "3xTF32 has no Q-in-registers variant (it spills beyond 128 registers): the factory says so, dispatch uses 'fwd'."
    assert ('3xtf32', True) not in A._TF32_BK
    with pytest.raises(ValueError, match='128 registers'):
        A._flash_fwd_mma_tf32_py('3xtf32', qreg=True)


def test_3xtf32_emulated_mma_adds_c_last():
    "The emulated 3xTF32 mma sums E from zero and adds C + E in float32, as geobook_mma_3xtf32_1688 does."
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((32, 4)).astype(np.float32), rng.standard_normal((32, 2)).astype(np.float32)
    c = np.full((32, 4), 1e4, np.float32)
    e = A._emu_mma(a, b, np.zeros((32, 4), np.float32), '3xtf32')
    np.testing.assert_array_equal(A._emu_mma(a, b, c, '3xtf32'), (c + e).astype(np.float32))


def test_first_call_check_tf32_uses_the_derived_bound():
    "For 'tf32' the tolerance is _tf32_bounds + 10⁻⁴ on O: a shift of 0.9× passes, 1.1× + 10⁻⁴ fails (one warning)."
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 64, generator=g) for n in (80, 100, 100))
    bo, _ = A._tf32_bounds(q, k, v, 0.125, 'tf32')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert A._mma_first_call_check('cpu', 'tf32', _stand_in(0.9 * bo), _stand_in()) is True
        bad = A._mma_first_call_check('cpu', 'tf32', _stand_in(1.1 * bo + 1e-4), _stand_in())
    assert 'disagrees' in bad and len(caught) == 1 and 'for tf32 on cpu' in str(caught[0].message)


def test_use_mma_float32_needs_the_opt_in(monkeypatch):
    "float32 reaches the tensor-core path only with fp32_precision 'tf32'/'3xtf32'; the check is per (device, precision)."
    checks = []
    monkeypatch.setattr(A, '_cuda_mode', lambda: 'gpu')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    monkeypatch.setattr(A, '_mma_first_call_check', lambda dev, dt, f, p, D=64, causal=False: (checks.append(dt), True)[1])
    monkeypatch.setattr(A, '_MMA_STATUS', {})
    monkeypatch.setattr(A, '_TENSOR_CORES', 'auto')
    q = torch.zeros(1, 4, 64)
    assert A._use_mma(q, A._Mask('full')) is False and A._use_mma(q, A._Mask('full'), 'ieee') is False
    assert A._use_mma(q, A._Mask('full'), 'tf32') and A._use_mma(q, A._Mask('full'), 'tf32')
    assert A._use_mma(q, A._Mask('full'), '3xtf32') and checks == ['tf32', '3xtf32']
    assert A._use_mma(q.double(), A._Mask('full'), 'tf32') is False


@pytest.mark.parametrize('bad,err', [('TF32', ValueError), ('high', ValueError), (True, TypeError), (None, TypeError),
                                     (32, TypeError)])
def test_fp32_precision_bad_input(bad, err):
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(err, match='fp32_precision'):
        A.flash_attention(q, q, q, backend='cpu', fp32_precision=bad)


def test_fp32_precision_is_an_allowance():
    "On the CPU (no tensor cores) 'tf32' and '3xtf32' change nothing: the same bits as 'ieee'."
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g) for n in (20, 30, 30))
    o = A.flash_attention(q, k, v, backend='cpu')
    for prec in ('tf32', '3xtf32'):
        assert torch.equal(A.flash_attention(q, k, v, backend='cpu', fp32_precision=prec), o)
