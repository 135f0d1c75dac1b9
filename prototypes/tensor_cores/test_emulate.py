"""CPU evidence for the tensor-core kernels' indexing (run: python -m pytest -q test_emulate.py, or via
check_offline.py). Needs no GPU and no CUDA toolkit: only numpy and tc_kernels' plain Python loaders."""
import numpy as np
import pytest

import emulate as E
import tc_kernels as T


def test_ptx_table_spot_checks():
    "Entries of the PTX ISA's m16n8k16 fragment figures, written out by hand."
    # lane 0: a0 = A[0, 0:2], a1 = A[8, 0:2], a2 = A[0, 8:10], a3 = A[8, 8:10]
    assert [(E.AR[0, i], E.AC[0, i]) for i in range(8)] == [(0, 0), (0, 1), (8, 0), (8, 1), (0, 8), (0, 9), (8, 8),
                                                             (8, 9)]
    # lane 5 (groupID 1, threadID_in_group 1): a3 = A[9, 10:12]; b0 = B[2:4, 1], b1 = B[10:12, 1]; c = rows 1, 9
    assert (E.AR[5, 6], E.AC[5, 6], E.AR[5, 7], E.AC[5, 7]) == (9, 10, 9, 11)
    assert [(E.BR[5, i], E.BC[5, i]) for i in range(4)] == [(2, 1), (3, 1), (10, 1), (11, 1)]
    assert [(E.CR[5, i], E.CC[5, i]) for i in range(4)] == [(1, 2), (1, 3), (9, 2), (9, 3)]
    # lane 31: c3 = D[15, 7]; every element of A, B, C owned exactly once
    assert (E.CR[31, 3], E.CC[31, 3]) == (15, 7)
    assert len(set(zip(E.AR.ravel(), E.AC.ravel()))) == 256
    assert len(set(zip(E.BR.ravel(), E.BC.ravel()))) == 128
    assert len(set(zip(E.CR.ravel(), E.CC.ravel()))) == 128


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_mma_emulator_alone(dtype):
    "The emulated instruction on registers built straight from the PTX tables computes A @ B + C."
    rng = np.random.default_rng(0)
    A16 = E.ENCODE[dtype](rng.standard_normal((16, 16)))
    B16 = E.ENCODE[dtype](rng.standard_normal((16, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32)
    ae, be = A16[E.AR, E.AC].astype(np.uint32), B16[E.BR, E.BC].astype(np.uint32)
    a = ae[:, 0::2] | (ae[:, 1::2] << 16)
    b = be[:, 0::2] | (be[:, 1::2] << 16)
    d = E.mma_m16n8k16(a, b, C[E.CR, E.CC], dtype)
    D = np.zeros((16, 8), np.float32)
    D[E.CR, E.CC] = d
    ref = E.DECODE[dtype](A16).astype(np.float64) @ E.DECODE[dtype](B16) + C
    np.testing.assert_allclose(D, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
@pytest.mark.parametrize('shape', [(16, 16, 8), (48, 64, 24), (40, 56, 20), (1, 5, 3)])
def test_gemm_emulation_matches_matmul(dtype, shape):
    "The kernel's loads + emulated mma + the kernel's stores reproduce A @ B, including ragged M, K, N."
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A16 = E.ENCODE[dtype](rng.standard_normal((M, K)))
    B16 = E.ENCODE[dtype](rng.standard_normal((K, N)))
    C = E.emulate_gemm(A16, B16, dtype)
    ref = E.DECODE[dtype](A16).astype(np.float64) @ E.DECODE[dtype](B16).astype(np.float64)
    assert not np.isnan(C).any()
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5)


def test_wrong_loader_is_caught():
    "Negative control: a loader that swaps registers a1 and a2 (a plausible slip) fails the same comparison."
    rng = np.random.default_rng(1)
    A16 = E.f32_to_bf16_bits(rng.standard_normal((16, 32)))
    B16 = E.f32_to_bf16_bits(rng.standard_normal((32, 8)))
    good = E.helpers('bfloat16')['load_a_frag']
    orig = E.helpers
    def bad_helpers(dtype):
        h = orig(dtype)
        h['load_a_frag'] = lambda *a: (lambda r: (r[0], r[2], r[1], r[3]))(good(*a))
        return h
    E.helpers = bad_helpers
    try:
        C = E.emulate_gemm(A16, B16, 'bfloat16')
    finally:
        E.helpers = orig
    ref = E.bf16_bits_to_f32(A16).astype(np.float64) @ E.bf16_bits_to_f32(B16)
    assert np.abs(C - ref).max() > 0.1


def _attention_ref(q, k, v, scale):
    s = np.einsum('bqd,bkd->bqk', q, k) * scale
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    return np.einsum('bqk,bkd->bqd', np.exp(s - lse[..., None]), v), lse


@pytest.mark.parametrize('q_in_smem', [True, False])
@pytest.mark.parametrize('dtype,atol', [('bfloat16', 4e-3), ('float16', 5e-4)])
def test_flash_fwd_emulation_matches_softmax(dtype, atol, q_in_smem):
    """The attention kernel, emulated lane by lane, against float64 softmax attention on the same 16-bit inputs:
    N_q = 80 (a partial second Q block), N_k = 100 (a partial last K tile). The tolerance is P's rounding to 16 bits
    (2⁻⁸ relative for bf16, 2⁻¹¹ for f16) before P V."""
    rng = np.random.default_rng(2)
    BH, Nq, Nk, D = 1, 80, 100, 64
    q16, k16, v16 = (E.ENCODE[dtype](rng.standard_normal((BH, n, D))) for n in (Nq, Nk, Nk))
    scale = 1 / np.sqrt(D)
    o, lse = E.emulate_flash_fwd(q16, k16, v16, scale, dtype, q_in_smem)
    q, k, v = (E.DECODE[dtype](x).astype(np.float64) for x in (q16, k16, v16))
    oref, lref = _attention_ref(q, k, v, scale)
    assert not np.isnan(o).any() and not np.isnan(lse).any()
    np.testing.assert_allclose(lse, lref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(o, oref, atol=atol)


def test_flash_fwd_wrong_v_fragment_is_caught():
    "Negative control for the attention path: a V loader that swaps b0 and b1 (keys 2t.. vs 2t+8..) is detected."
    rng = np.random.default_rng(3)
    q16, k16, v16 = (E.f32_to_bf16_bits(rng.standard_normal((1, n, 64))) for n in (16, 64, 64))
    orig = E.helpers
    def bad_helpers(dtype):
        h = orig(dtype)
        good = h['vt_b_frag']
        h['vt_b_frag'] = lambda *a: good(*a)[::-1]
        return h
    E.helpers = bad_helpers
    try:
        o, _ = E.emulate_flash_fwd(q16, k16, v16, 0.125, 'bfloat16')
    finally:
        E.helpers = orig
    q, k, v = (E.bf16_bits_to_f32(x).astype(np.float64) for x in (q16, k16, v16))
    oref, _ = _attention_ref(q, k, v, 0.125)
    assert np.abs(o - oref).max() > 0.05


def test_tf32_table_spot_checks():
    "m16n8k8 .tf32 fragments from the PTX ISA figure: lane 6 (groupID 1, threadID_in_group 2)."
    assert [(E.AR8[6, i], E.AC8[6, i]) for i in range(4)] == [(1, 2), (9, 2), (1, 6), (9, 6)]
    assert [(E.BR8[6, i], E.BC8[6, i]) for i in range(2)] == [(2, 1), (6, 1)]
    assert len(set(zip(E.AR8.ravel(), E.AC8.ravel()))) == 128 and len(set(zip(E.BR8.ravel(), E.BC8.ravel()))) == 64


@pytest.mark.parametrize('shape', [(16, 8, 8), (48, 40, 24), (37, 21, 13)])
def test_gemm_tf32_emulation(shape):
    """TF32: equals the float64 product of the TF32-rounded inputs (the indexing is right) and is within TF32's
    error of the float32 product; 3xTF32 is within float32-class error of the exact product."""
    M, K, N = shape
    rng = np.random.default_rng(K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    exact = A.astype(np.float64) @ B.astype(np.float64)
    c1 = E.emulate_gemm_f32(A, B, 'tf32')
    ref_t = E.tf32_round(A).astype(np.float64) @ E.tf32_round(B).astype(np.float64)
    np.testing.assert_allclose(c1, ref_t, rtol=1e-5, atol=1e-5)
    assert np.abs(c1 - exact).max() > 1e-5                 # TF32 rounding is visible...
    np.testing.assert_allclose(c1, exact, atol=2e-3 * np.sqrt(K))   # ...and small
    c3 = E.emulate_gemm_f32(A, B, '3xtf32')
    np.testing.assert_allclose(c3, exact, rtol=1e-5, atol=1e-5)
