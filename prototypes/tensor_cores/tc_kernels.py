"""Tensor-core kernels in Numba CUDA through a linked CUDA C++ helper (prototype for geobook issue 18, part 2).

Two kernels, both fed with 16-bit floats given as their bits (numpy uint16 / torch int16 viewed as uint16, or pairs
of them as uint32), both accumulating in float32 with `mma.sync.aligned.m16n8k16` (see mma_helper.cu for the fragment
layout):

* `gemm_kernel(dtype)`: C = A @ B for A (M, K), B (K, N) row-major, C (M, N) float32; one warp per 16×8 tile of C,
  looping over K in steps of 16; any M, N, K (loads outside the matrices read 0, stores outside are skipped).
* `flash_fwd_kernel(dtype)`: FlashAttention-2 forward, head dim 64, one block of 4 warps per 64-row Q tile, one warp
  per 16 query rows; S = Q Kᵀ and O += P V on tensor cores, online softmax in float32 on the accumulator fragments.

The fragment loaders (`load_a_frag`, `load_b_frag`, `store_c_frag`, `kt_b_frag`, `vt_b_frag`, `p_a_frag`) are plain
Python: the kernels compile them as device functions, and `emulate.py` runs the very same functions with NumPy per
lane, which is how the indexing is checked on a CPU.
"""
import math
import types as pytypes
from pathlib import Path

import numpy as np
from numba import cuda, float32, uint32, types

CU = str(Path(__file__).with_name('mma_helper.cu'))
_F4 = types.UniTuple(float32, 4)
_MMA_SIG = _F4(uint32, uint32, uint32, uint32, uint32, uint32, float32, float32, float32, float32)
mma_bf16 = cuda.declare_device('geobook_mma_bf16_16816', _MMA_SIG, link=[CU])
mma_f16 = cuda.declare_device('geobook_mma_f16_16816', _MMA_SIG, link=[CU])
pack_bf16 = cuda.declare_device('geobook_pack_bf16x2', uint32(float32, float32), link=[CU])
pack_f16 = cuda.declare_device('geobook_pack_f16x2', uint32(float32, float32), link=[CU])
mma_tf32 = cuda.declare_device('geobook_mma_tf32_1688', _F4(*[float32] * 10), link=[CU])
mma_3xtf32 = cuda.declare_device('geobook_mma_3xtf32_1688', _F4(*[float32] * 10), link=[CU])
MMA = {'bfloat16': mma_bf16, 'float16': mma_f16, 'tf32': mma_tf32, '3xtf32': mma_3xtf32}
PACK = {'bfloat16': pack_bf16, 'float16': pack_f16}

WARPS = 4                      # warps per block in both kernels (128 threads)
D_HEAD = 64                    # head dimension of the attention kernel
FWD_LAUNCH_BOUNDS = (32 * WARPS, 4)   # ≤ 128 threads, ≥ 4 blocks per SM: ptxas keeps to 128 registers
BQ, BK = 16 * WARPS, 64        # query rows per block, keys per K/V tile
KS_STRIDE = D_HEAD // 2 + 4    # 32-bit words per row of the shared K tile (+4: conflict-free fragment reads)
VT_STRIDE = BK // 2 + 4        # 32-bit words per row of the shared Vᵀ tile
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ---------------------------------------------------------------- fragment loaders (plain Python: NumPy and Numba)
def ld16(X, r, c):
    "The 16 bits of X[r, c] (X a 2-D uint16 array) as uint32, or 0 outside X."
    if r < X.shape[0] and c < X.shape[1]:
        return np.uint32(X[r, c])
    return np.uint32(0)


def pack2(lo, hi):
    "Two 16-bit patterns in one 32-bit register: lo in bits 0..15 (the smaller k), hi in bits 16..31."
    return np.uint32(lo | (hi << np.uint32(16)))


def load_a_frag(A, r0, k0, lane):
    """Registers a0..a3 of this lane for the 16×16 tile A[r0:r0+16, k0:k0+16] (row-major A, uint16 bits).
    Lane = 4g + t holds rows g, g+8 and k = 2t, 2t+1, 2t+8, 2t+9 of the tile."""
    g = lane >> 2
    t = lane & 3
    r = r0 + g
    k = k0 + 2 * t
    a0 = pack2(ld16(A, r, k), ld16(A, r, k + 1))
    a1 = pack2(ld16(A, r + 8, k), ld16(A, r + 8, k + 1))
    a2 = pack2(ld16(A, r, k + 8), ld16(A, r, k + 9))
    a3 = pack2(ld16(A, r + 8, k + 8), ld16(A, r + 8, k + 9))
    return a0, a1, a2, a3


def load_b_frag(B, k0, n0, lane):
    """Registers b0, b1 of this lane for the 16×8 tile B[k0:k0+16, n0:n0+8] (row-major B, uint16 bits).
    Lane = 4g + t holds column g and k = 2t, 2t+1 (b0), 2t+8, 2t+9 (b1): two rows apart in memory, so packed here."""
    g = lane >> 2
    t = lane & 3
    n = n0 + g
    k = k0 + 2 * t
    b0 = pack2(ld16(B, k, n), ld16(B, k + 1, n))
    b1 = pack2(ld16(B, k + 8, n), ld16(B, k + 9, n))
    return b0, b1


def store_c_frag(C, r0, n0, lane, d0, d1, d2, d3):
    "Write this lane's accumulators of the 16×8 tile C[r0:r0+16, n0:n0+8]: d0, d1 at row g, d2, d3 at row g+8."
    g = lane >> 2
    t = lane & 3
    r = r0 + g
    n = n0 + 2 * t
    M, N = C.shape
    if r < M:
        if n < N:
            C[r, n] = d0
        if n + 1 < N:
            C[r, n + 1] = d1
    if r + 8 < M:
        if n < N:
            C[r + 8, n] = d2
        if n + 1 < N:
            C[r + 8, n + 1] = d3


def kt_b_frag(Ks, j, s, lane):
    """b0, b1 of this lane for the B = Kᵀ tile of keys 8j..8j+7 (n) and head dims 16s..16s+15 (k), from the shared
    K tile Ks[key, d/2] (uint32: pairs of neighbouring head dims, exactly a B register's pair)."""
    g = lane >> 2
    t = lane & 3
    return Ks[8 * j + g, 8 * s + t], Ks[8 * j + g, 8 * s + t + 4]


def vt_b_frag(Vt, j, s, lane):
    """b0, b1 of this lane for the B = V tile of keys 16s..16s+15 (k) and head dims 8j..8j+7 (n), from the shared
    transposed tile Vt[d, key/2] (uint32: pairs of neighbouring keys, packed when the tile was loaded)."""
    g = lane >> 2
    t = lane & 3
    return Vt[8 * j + g, 8 * s + t], Vt[8 * j + g, 8 * s + t + 4]


def q_a_frag(Q32, bh, r0, s, lane):
    """a0..a3 of this lane for the Q tile rows r0..r0+15, head dims 16s..16s+15, straight from global memory:
    Q32 (BH, N, D/2) uint32 holds pairs of neighbouring head dims. Rows ≥ N read 0."""
    g = lane >> 2
    t = lane & 3
    r = r0 + g
    n = Q32.shape[1]
    z = np.uint32(0)
    a0 = Q32[bh, r, 8 * s + t] if r < n else z
    a2 = Q32[bh, r, 8 * s + t + 4] if r < n else z
    a1 = Q32[bh, r + 8, 8 * s + t] if r + 8 < n else z
    a3 = Q32[bh, r + 8, 8 * s + t + 4] if r + 8 < n else z
    return a0, a1, a2, a3


def qs_a_frag(Qs, w, s, lane):
    """a0..a3 of this lane for warp w's Q rows 16w..16w+15, head dims 16s..16s+15, from the shared Q tile
    Qs[row, d/2] (uint32 pairs of neighbouring head dims, filled by ks_word like the K tile)."""
    g = lane >> 2
    t = lane & 3
    r = 16 * w + g
    return Qs[r, 8 * s + t], Qs[r + 8, 8 * s + t], Qs[r, 8 * s + t + 4], Qs[r + 8, 8 * s + t + 4]


def ldf(X, r, c):
    "X[r, c] of a 2-D float32 array, or 0 outside X."
    if r < X.shape[0] and c < X.shape[1]:
        return X[r, c]
    return np.float32(0.0)


def load_a_tf32(A, r0, k0, lane):
    """a0..a3 of this lane for the 16×8 float32 tile A[r0:r0+16, k0:k0+8] of mma.m16n8k8 (.tf32): rows g, g+8,
    columns t, t+4, one element per register (rounded to TF32 inside the helper)."""
    g = lane >> 2
    t = lane & 3
    return (ldf(A, r0 + g, k0 + t), ldf(A, r0 + g + 8, k0 + t), ldf(A, r0 + g, k0 + t + 4),
            ldf(A, r0 + g + 8, k0 + t + 4))


def load_b_tf32(B, k0, n0, lane):
    "b0, b1 of this lane for the 8×8 float32 tile B[k0:k0+8, n0:n0+8]: column g, rows t and t+4."
    g = lane >> 2
    t = lane & 3
    return ldf(B, k0 + t, n0 + g), ldf(B, k0 + t + 4, n0 + g)


def ks_word(k32, bh, k0, kr, kc):
    "Word kc (head dims 2kc, 2kc+1) of key k0 + kr for the shared K tile; 0 past N_k."
    return k32[bh, k0 + kr, kc] if k0 + kr < k32.shape[1] else np.uint32(0)


def vt_word(v16, bh, k0, kp, d):
    "Word (d, kp) of the shared Vᵀ tile: V[k0 + 2kp, d] in the low half, V[k0 + 2kp + 1, d] in the high half; 0 past N_k."
    kk = k0 + 2 * kp
    n = v16.shape[1]
    lo = np.uint32(v16[bh, kk, d]) if kk < n else np.uint32(0)
    hi = np.uint32(v16[bh, kk + 1, d]) if kk + 1 < n else np.uint32(0)
    return pack2(lo, hi)


def p_a_frag(s, u):
    """a0..a3 of this lane for P's k-step u (keys 16u..16u+15) from its S/P accumulators s (n-tile j in s[4j:4j+4]):
    n-tiles 2u and 2u+1 give (row g | row g+8) × (cols 2t, 2t+1) each, rounded pairwise to 16 bits by pack_pair."""
    return (pack_pair(s[8 * u], s[8 * u + 1]), pack_pair(s[8 * u + 2], s[8 * u + 3]),
            pack_pair(s[8 * u + 4], s[8 * u + 5]), pack_pair(s[8 * u + 6], s[8 * u + 7]))


def pack_pair(lo, hi):
    "Placeholder: bound to the device pack (bf16 or f16) in kernels and to its NumPy emulation in emulate.py."
    raise NotImplementedError


def bind(f, env):
    "A copy of the plain function f whose global names in env are replaced (how kernels and emulator share code)."
    g = dict(f.__globals__)
    g.update(env)
    return pytypes.FunctionType(f.__code__, g, f.__name__, f.__defaults__)


# ---------------------------------------------------------------- kernels
_cache = {}


def _dev(f, dtype='bfloat16'):
    """f as a force-inlined device function whose plain helpers (ld16, pack2, pack_pair) are swapped for device
    versions (Numba resolves globals through f.__globals__, where they are plain Python functions)."""
    key = ('dev', dtype)
    if key not in _cache:
        jit = lambda h: cuda.jit(device=True, forceinline=True)(h)
        _cache[key] = {'ld16': jit(ld16), 'ldf': jit(ldf), 'pack2': jit(pack2), 'pack_pair': PACK.get(dtype)}
    return cuda.jit(device=True, forceinline=True)(bind(f, _cache[key]))


def gemm_kernel(dtype='bfloat16'):
    """The kernel gemm(A, B, C): A (M, K), B (K, N) uint16 bits of `dtype` ('bfloat16' or 'float16'), C (M, N)
    float32 = A @ B. Grid (⌈N / (8·WARPS)⌉, ⌈M/16⌉), 32·WARPS threads per block: warp w of block (x, y) computes
    C[16y : 16y+16, 8(WARPS·x + w) : +8]."""
    key = ('gemm', dtype)
    if key in _cache:
        return _cache[key]
    mma = MMA[dtype]
    lda, ldb, stc = _dev(load_a_frag, dtype), _dev(load_b_frag, dtype), _dev(store_c_frag, dtype)

    def gemm(A, B, C):
        lane = cuda.threadIdx.x & 31
        M, K = A.shape
        N = B.shape[1]
        r0 = 16 * cuda.blockIdx.y                                  # 2-D grid: no integer division in the kernel
        n0 = 8 * (cuda.blockIdx.x * WARPS + (cuda.threadIdx.x >> 5))
        if n0 >= N:                   # the same for all 32 lanes of a warp: whole warps leave
            return
        c0 = c1 = c2 = c3 = float32(0.0)
        for k0 in range(0, K, 16):
            a0, a1, a2, a3 = lda(A, r0, k0, lane)
            b0, b1 = ldb(B, k0, n0, lane)
            c0, c1, c2, c3 = mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
        stc(C, r0, n0, lane, c0, c1, c2, c3)

    _cache[key] = gemm
    return gemm


def gemm_f32_kernel(mode='tf32'):
    """The kernel gemm(A, B, C) for float32 A (M, K), B (K, N), C (M, N) = A @ B on TF32 tensor cores:
    mode 'tf32' (one mma.m16n8k8 per k-step, operands rounded to TF32: ~1e-3 relative) or '3xtf32' (three per
    k-step, big/small split: ~float32 accuracy). Grid and block as gemm_kernel."""
    key = ('gemm_f32', mode)
    if key in _cache:
        return _cache[key]
    mma = MMA[mode]
    lda, ldb, stc = _dev(load_a_tf32, mode), _dev(load_b_tf32, mode), _dev(store_c_frag, mode)

    def gemm(A, B, C):
        lane = cuda.threadIdx.x & 31
        M, K = A.shape
        N = B.shape[1]
        r0 = 16 * cuda.blockIdx.y
        n0 = 8 * (cuda.blockIdx.x * WARPS + (cuda.threadIdx.x >> 5))
        if n0 >= N:
            return
        c0 = c1 = c2 = c3 = float32(0.0)
        for k0 in range(0, K, 8):
            a0, a1, a2, a3 = lda(A, r0, k0, lane)
            b0, b1 = ldb(B, k0, n0, lane)
            c0, c1, c2, c3 = mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
        stc(C, r0, n0, lane, c0, c1, c2, c3)

    _cache[key] = gemm
    return gemm


def flash_fwd_kernel(dtype='bfloat16', q_in_smem=True):
    """The kernel fwd(q32, k32, v16, o, lse, scale2): FlashAttention-2 forward without mask, head dim 64.
    q32 (BH, N_q, 32), k32 (BH, N_k, 32) uint32 = the 16-bit q, k with pairs of head dims in one word; v16 (BH, N_k, 64)
    uint16 bits; o (BH, N_q, 64) float32; lse (BH, N_q) float32 (natural log); scale2 = τ·log₂e (float32).
    Grid (⌈N_q/64⌉, BH), 128 threads. Any N_q, N_k ≥ 1. q_in_smem: Q fragments re-read from a shared Q tile for
    every K tile (fewer registers) rather than held in 16 registers per lane."""
    key = ('fwd', dtype, q_in_smem)
    if key in _cache:
        return _cache[key]
    mma = MMA[dtype]
    qa, qsa, ktb, vtb, pa = (_dev(f, dtype) for f in (q_a_frag, qs_a_frag, kt_b_frag, vt_b_frag, p_a_frag))
    ksw, vtw = _dev(ks_word, dtype), _dev(vt_word, dtype)
    D2 = D_HEAD // 2
    NJ_S = BK // 8          # 8 n-tiles of S (keys)
    NS_S = D_HEAD // 16     # 4 k-steps of Q Kᵀ (head dims)
    NJ_O = D_HEAD // 8      # 8 n-tiles of O (head dims)
    NS_O = BK // 16         # 4 k-steps of P V (keys)
    QF, PF, SF, OF = 4 * NS_S, 4 * NS_O, 4 * NJ_S, 4 * NJ_O   # local array sizes (compile-time constants)
    NEG_INF = float32(-math.inf)
    ln2 = float32(LN2)

    def fwd(q32, k32, v16, o, lse, scale2):
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        bh = cuda.blockIdx.y
        Nq = q32.shape[1]
        Nk = k32.shape[1]
        r0 = cuda.blockIdx.x * BQ + 16 * warp          # this warp's first query row
        g = lane >> 2
        t = lane & 3
        Ks = cuda.shared.array((BK, KS_STRIDE), uint32)
        Vt = cuda.shared.array((D_HEAD, VT_STRIDE), uint32)
        qf = cuda.local.array(QF, uint32)        # Q fragments, kept for the whole key loop
        pf = cuda.local.array(PF, uint32)        # P fragments (16-bit) of the current tile
        s = cuda.local.array(SF, float32)        # S accumulators (16 rows × 64 keys per warp)
        acc = cuda.local.array(OF, float32)      # O accumulators (16 rows × 64 dims per warp)
        m = cuda.local.array(2, float32)               # running max of rows g, g+8 (log₂ units)
        l = cuda.local.array(2, float32)               # this lane's part of the running sum of rows g, g+8
        Qs = cuda.shared.array((BQ if q_in_smem else 1, KS_STRIDE), uint32)
        if q_in_smem:
            for idx in range(tid, BQ * D2, 32 * WARPS):
                qr = idx // D2
                Qs[qr, idx - qr * D2] = ksw(q32, bh, cuda.blockIdx.x * BQ, qr, idx - qr * D2)
        for ss in range(NS_S):
            if q_in_smem:
                continue
            a0, a1, a2, a3 = qa(q32, bh, r0, ss, lane)
            qf[4 * ss] = a0
            qf[4 * ss + 1] = a1
            qf[4 * ss + 2] = a2
            qf[4 * ss + 3] = a3
        for i in range(OF):
            acc[i] = float32(0.0)
        for h in range(2):
            m[h] = NEG_INF
            l[h] = float32(0.0)
        for k0 in range(0, Nk, BK):
            cuda.syncthreads()                          # the previous tile is no longer read
            for idx in range(tid, BK * D2, 32 * WARPS):  # K tile: copy 32-bit pairs of head dims
                kr = idx // D2
                Ks[kr, idx - kr * D2] = ksw(k32, bh, k0, kr, idx - kr * D2)
            for idx in range(tid, D_HEAD * (BK // 2), 32 * WARPS):  # Vᵀ tile: pack pairs of neighbouring keys
                kp = idx // D_HEAD
                Vt[idx - kp * D_HEAD, kp] = vtw(v16, bh, k0, kp, idx - kp * D_HEAD)
            cuda.syncthreads()
            # S = Q Kᵀ on tensor cores
            for j in range(NJ_S):
                c0 = c1 = c2 = c3 = float32(0.0)
                for ss in range(NS_S):
                    b0, b1 = ktb(Ks, j, ss, lane)
                    if q_in_smem:
                        a0, a1, a2, a3 = qsa(Qs, warp, ss, lane)
                    else:
                        a0, a1, a2, a3 = qf[4 * ss], qf[4 * ss + 1], qf[4 * ss + 2], qf[4 * ss + 3]
                    c0, c1, c2, c3 = mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
                s[4 * j] = c0 * scale2
                s[4 * j + 1] = c1 * scale2
                s[4 * j + 2] = c2 * scale2
                s[4 * j + 3] = c3 * scale2
            if k0 + BK > Nk:                            # only the last tile can hold keys past N_k
                for j in range(NJ_S):
                    col = k0 + 8 * j + 2 * t
                    if col >= Nk:
                        s[4 * j] = NEG_INF
                        s[4 * j + 2] = NEG_INF
                    if col + 1 >= Nk:
                        s[4 * j + 1] = NEG_INF
                        s[4 * j + 3] = NEG_INF
            # online softmax, row h = 0 (row g: registers 0, 1 of each n-tile) and h = 1 (row g+8: registers 2, 3)
            for h in range(2):
                mx = NEG_INF
                for j in range(NJ_S):
                    mx = max(mx, max(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]))
                mx = max(mx, cuda.shfl_xor_sync(0xffffffff, mx, 1))   # the 4 lanes of a group share the row
                mx = max(mx, cuda.shfl_xor_sync(0xffffffff, mx, 2))
                mnew = max(m[h], mx)                   # finite: every tile has a key < N_k
                alpha = math.exp2(m[h] - mnew)
                m[h] = mnew
                ls = float32(0.0)
                for j in range(NJ_S):
                    p0 = math.exp2(s[4 * j + 2 * h] - mnew)
                    p1 = math.exp2(s[4 * j + 2 * h + 1] - mnew)
                    s[4 * j + 2 * h] = p0
                    s[4 * j + 2 * h + 1] = p1
                    ls += p0 + p1
                l[h] = l[h] * alpha + ls
                for j in range(NJ_O):
                    acc[4 * j + 2 * h] *= alpha
                    acc[4 * j + 2 * h + 1] *= alpha
            # P: the accumulators of n-tiles 2u, 2u+1 are the A fragment of k-step u (see mma_helper.cu)
            for u in range(NS_O):
                a0, a1, a2, a3 = pa(s, u)
                pf[4 * u] = a0
                pf[4 * u + 1] = a1
                pf[4 * u + 2] = a2
                pf[4 * u + 3] = a3
            # O += P V on tensor cores
            for j in range(NJ_O):
                c0 = acc[4 * j]
                c1 = acc[4 * j + 1]
                c2 = acc[4 * j + 2]
                c3 = acc[4 * j + 3]
                for u in range(NS_O):
                    b0, b1 = vtb(Vt, j, u, lane)
                    c0, c1, c2, c3 = mma(pf[4 * u], pf[4 * u + 1], pf[4 * u + 2], pf[4 * u + 3],
                                         b0, b1, c0, c1, c2, c3)
                acc[4 * j] = c0
                acc[4 * j + 1] = c1
                acc[4 * j + 2] = c2
                acc[4 * j + 3] = c3
        # epilogue: full row sums, normalise, store
        for h in range(2):
            lt = l[h]
            lt += cuda.shfl_xor_sync(0xffffffff, lt, 1)
            lt += cuda.shfl_xor_sync(0xffffffff, lt, 2)
            r = r0 + g + 8 * h
            if r < Nq:
                inv = float32(1.0) / lt
                for j in range(NJ_O):
                    o[bh, r, 8 * j + 2 * t] = acc[4 * j + 2 * h] * inv
                    o[bh, r, 8 * j + 2 * t + 1] = acc[4 * j + 2 * h + 1] * inv
                if t == 0:
                    lse[bh, r] = (m[h] + math.log2(lt)) * ln2

    _cache[key] = fwd
    return fwd


# ---------------------------------------------------------------- signatures (for offline compilation and launch)
def gemm_sig():
    a = types.Array(types.uint16, 2, 'C')
    return (a, a, types.Array(float32, 2, 'C'))


def fwd_sig():
    u32 = types.Array(uint32, 3, 'C')
    return (u32, u32, types.Array(types.uint16, 3, 'C'), types.Array(float32, 3, 'C'),
            types.Array(float32, 2, 'C'), float32)


def gemm_f32_sig():
    a = types.Array(float32, 2, 'C')
    return (a, a, a)
