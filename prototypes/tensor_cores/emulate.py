"""NumPy emulation of the tensor-core kernels in tc_kernels.py, lane by lane, for CPU-side evidence that their
fragment indexing is right.

What is shared with the kernels and what is not:
* The fragment loaders/stores (load_a_frag, load_b_frag, store_c_frag, q_a_frag, qs_a_frag, kt_b_frag, vt_b_frag, p_a_frag,
  ks_word, vt_word) are the very Python functions the kernels compile; here they run on NumPy arrays, one lane at a
  time.
* The mma instruction is emulated by `mma_m16n8k16`, written independently from the PTX ISA's element-wise
  description (elements a0..a7, b0..b3, c0..c3 with groupID and threadID_in_group), not from the loaders' register
  formulas. So a loader that puts an element in the wrong register gives a wrong product here.
* The softmax part of the attention kernel is re-written at warp level (arrays over 32 lanes), step for step.
"""
import numpy as np

import tc_kernels as T


# ---------------------------------------------------------------- 16-bit formats
def f32_to_bf16_bits(x):
    "float32 -> bfloat16 bits (uint16), round to nearest even (finite inputs), as cvt.rn.bf16x2.f32 does."
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.asarray(b, np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_f16_bits(x):
    return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def f16_bits_to_f32(b):
    return np.asarray(b, np.uint16).view(np.float16).astype(np.float32)


DECODE = {'bfloat16': bf16_bits_to_f32, 'float16': f16_bits_to_f32}
ENCODE = {'bfloat16': f32_to_bf16_bits, 'float16': f32_to_f16_bits}


def _pack_pair_np(encode):
    def pack_pair(lo, hi):
        return np.uint32(int(encode(np.float32(lo))) | (int(encode(np.float32(hi))) << 16))
    return pack_pair


# the kernels' plain helpers, bound for NumPy (pack_pair = the emulated cvt.rn.{bf16,f16}x2.f32)
def helpers(dtype):
    env = {'pack_pair': _pack_pair_np(ENCODE[dtype])}
    names = ['load_a_frag', 'load_b_frag', 'store_c_frag', 'q_a_frag', 'qs_a_frag', 'kt_b_frag', 'vt_b_frag', 'p_a_frag',
             'ks_word', 'vt_word', 'load_a_tf32', 'load_b_tf32']
    return {n: T.bind(getattr(T, n), env) for n in names}


# ---------------------------------------------------------------- the mma instruction, from the PTX ISA description
def _ptx_layout():
    """Index tables of mma.m16n8k16 (.f16/.bf16 inputs, .f32 accumulators), written element-wise as the PTX ISA does:
    groupID = laneid >> 2, threadID_in_group = laneid % 4;
    A elements a_i (i = 0..7, two per 32-bit register, a_{2r} in the low half of register r):
        row = groupID for i in {0,1,4,5}, groupID + 8 for i in {2,3,6,7};
        col = threadID_in_group*2 + (i & 1) for i < 4, threadID_in_group*2 + (i & 1) + 8 for i >= 4;
    B elements b_i (i = 0..3): row = threadID_in_group*2 + (i & 1) for i < 2, + 8 for i >= 2; col = groupID;
    C/D elements c_i (i = 0..3): row = groupID for i < 2, groupID + 8 for i >= 2; col = threadID_in_group*2 + (i & 1).
    Returns (A rows, A cols) of shape (32, 8), (B rows, B cols) (32, 4), (C rows, C cols) (32, 4)."""
    ar, ac = np.zeros((32, 8), int), np.zeros((32, 8), int)
    br, bc = np.zeros((32, 4), int), np.zeros((32, 4), int)
    cr, cc = np.zeros((32, 4), int), np.zeros((32, 4), int)
    for lane in range(32):
        gid, tig = lane >> 2, lane % 4
        for i in range(8):
            ar[lane, i] = gid if i in (0, 1, 4, 5) else gid + 8
            ac[lane, i] = tig * 2 + (i & 1) + (8 if i >= 4 else 0)
        for i in range(4):
            br[lane, i] = tig * 2 + (i & 1) + (8 if i >= 2 else 0)
            bc[lane, i] = gid
            cr[lane, i] = gid if i < 2 else gid + 8
            cc[lane, i] = tig * 2 + (i & 1)
    return ar, ac, br, bc, cr, cc


AR, AC, BR, BC, CR, CC = _ptx_layout()


def _halves(regs):
    "(32, R) uint32 registers -> (32, 2R) uint16 elements: element 2r = low half of register r, 2r+1 = high half."
    regs = np.asarray(regs, np.uint32)
    out = np.empty((32, 2 * regs.shape[1]), np.uint16)
    out[:, 0::2] = regs & 0xFFFF
    out[:, 1::2] = regs >> 16
    return out


def mma_m16n8k16(a_regs, b_regs, c, dtype):
    """Emulated mma.sync.aligned.m16n8k16.row.col.f32.{dtype}.{dtype}.f32 for a warp: a_regs (32, 4), b_regs (32, 2)
    uint32, c (32, 4) float32 -> d (32, 4) float32. The products are exact in float64 (16-bit inputs); the hardware's
    accumulation order and rounding inside the instruction are not modelled (compare with a tolerance)."""
    dec = DECODE[dtype]
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    C = np.zeros((16, 8))
    A[AR, AC] = dec(_halves(a_regs))
    B[BR, BC] = dec(_halves(b_regs))
    C[CR, CC] = np.asarray(c, np.float32)
    D = (A @ B + C).astype(np.float32)
    return D[CR, CC]


# ---------------------------------------------------------------- the kernels, emulated
def emulate_gemm(A16, B16, dtype='bfloat16'):
    """What gemm_kernel(dtype) computes for A16 (M, K), B16 (K, N) uint16 bits: per warp (one 16×8 tile of C), per
    k-step, each lane's registers from the kernel's own loaders, the mma emulated, the result stored by the kernel's
    own store_c_frag."""
    h = helpers(dtype)
    M, K = A16.shape
    N = B16.shape[1]
    C = np.full((M, N), np.nan, np.float32)
    for r0 in range(0, M, 16):
        for n0 in range(0, N, 8):
            acc = np.zeros((32, 4), np.float32)
            for k0 in range(0, K, 16):
                a = np.array([h['load_a_frag'](A16, r0, k0, lane) for lane in range(32)], np.uint32)
                b = np.array([h['load_b_frag'](B16, k0, n0, lane) for lane in range(32)], np.uint32)
                acc = mma_m16n8k16(a, b, acc, dtype)
            for lane in range(32):
                h['store_c_frag'](C, r0, n0, lane, *acc[lane])
    return C


def emulate_flash_fwd(q16, k16, v16, scale, dtype='bfloat16', q_in_smem=True):
    """What flash_fwd_kernel(dtype) computes for q16 (BH, N_q, 64), k16, v16 (BH, N_k, 64) uint16 bits:
    returns (o (BH, N_q, 64) float32, lse (BH, N_q) float32). Step for step as the kernel: shared tiles through
    ks_word / vt_word, fragments through q_a_frag / kt_b_frag / vt_b_frag / p_a_frag, the online softmax on each
    lane's accumulators with the row reductions over the 4 lanes of a group (the kernel's two shfl_xor steps)."""
    h = helpers(dtype)
    BH, Nq, D = q16.shape
    Nk = k16.shape[1]
    assert D == T.D_HEAD
    q32 = np.ascontiguousarray(q16).view(np.uint32)
    k32 = np.ascontiguousarray(k16).view(np.uint32)
    scale2 = np.float32(scale * T.LOG2E)
    o = np.full((BH, Nq, D), np.nan, np.float32)
    lse = np.full((BH, Nq), np.nan, np.float32)
    lanes = np.arange(32)
    g, t = lanes >> 2, lanes & 3

    def quad(x, op):       # reduce over the 4 lanes of each group, result on every lane (shfl_xor 1, then 2)
        x = op(x, x[lanes ^ 1])
        return op(x, x[lanes ^ 2])

    for bh in range(BH):
        tiles = []
        for k0 in range(0, Nk, T.BK):
            Ks = np.array([[h['ks_word'](k32, bh, k0, kr, kc) for kc in range(D // 2)] for kr in range(T.BK)],
                          np.uint32)
            Vt = np.array([[h['vt_word'](v16, bh, k0, kp, d) for kp in range(T.BK // 2)] for d in range(D)],
                          np.uint32)
            tiles.append((k0, Ks, Vt))
        for qb in range(0, Nq, T.BQ):
            for w in range(T.WARPS):
                r0 = qb + 16 * w
                if q_in_smem:   # the shared Q tile (filled by ks_word, as in the kernel), then qs_a_frag
                    Qs = np.array([[h['ks_word'](q32, bh, qb, qr, c) for c in range(D // 2)] for qr in range(T.BQ)],
                                  np.uint32)
                    qf = np.array([[h['qs_a_frag'](Qs, w, ss, lane) for ss in range(4)] for lane in range(32)],
                                  np.uint32)                                    # (32, 4 k-steps, 4)
                else:
                    qf = np.array([[h['q_a_frag'](q32, bh, r0, ss, lane) for ss in range(4)] for lane in range(32)],
                                  np.uint32)
                acc = np.zeros((32, 32), np.float32)
                m = np.full((32, 2), -np.inf, np.float32)
                l = np.zeros((32, 2), np.float32)
                for k0, Ks, Vt in tiles:
                    s = np.zeros((32, 32), np.float32)
                    for j in range(8):
                        c = np.zeros((32, 4), np.float32)
                        for ss in range(4):
                            b = np.array([h['kt_b_frag'](Ks, j, ss, lane) for lane in range(32)], np.uint32)
                            c = mma_m16n8k16(qf[:, ss], b, c, dtype)
                        s[:, 4 * j:4 * j + 4] = c * scale2
                    if k0 + T.BK > Nk:
                        for j in range(8):
                            col = k0 + 8 * j + 2 * t
                            s[col >= Nk, 4 * j] = -np.inf
                            s[col >= Nk, 4 * j + 2] = -np.inf
                            s[col + 1 >= Nk, 4 * j + 1] = -np.inf
                            s[col + 1 >= Nk, 4 * j + 3] = -np.inf
                    for hh in range(2):
                        cols = np.array([4 * j + 2 * hh + e for j in range(8) for e in range(2)])
                        mx = quad(s[:, cols].max(axis=1), np.maximum)
                        mnew = np.maximum(m[:, hh], mx)
                        alpha = np.exp2(m[:, hh] - mnew).astype(np.float32)
                        m[:, hh] = mnew
                        p = np.exp2(s[:, cols] - mnew[:, None]).astype(np.float32)
                        s[:, cols] = p
                        l[:, hh] = l[:, hh] * alpha + p.sum(axis=1, dtype=np.float32)
                        ocols = np.array([4 * j + 2 * hh + e for j in range(8) for e in range(2)])
                        acc[:, ocols] *= alpha[:, None]
                    pf = np.array([[h['p_a_frag'](s[lane], u) for u in range(4)] for lane in range(32)], np.uint32)
                    for j in range(8):
                        c = acc[:, 4 * j:4 * j + 4]
                        for u in range(4):
                            b = np.array([h['vt_b_frag'](Vt, j, u, lane) for lane in range(32)], np.uint32)
                            c = mma_m16n8k16(pf[:, u], b, c, dtype)
                        acc[:, 4 * j:4 * j + 4] = c
                for hh in range(2):
                    lt = quad(l[:, hh], np.add)
                    for lane in range(32):
                        r = r0 + g[lane] + 8 * hh
                        if r < Nq:
                            for j in range(8):
                                o[bh, r, 8 * j + 2 * t[lane]] = acc[lane, 4 * j + 2 * hh] / lt[lane]
                                o[bh, r, 8 * j + 2 * t[lane] + 1] = acc[lane, 4 * j + 2 * hh + 1] / lt[lane]
                            if t[lane] == 0:
                                lse[bh, r] = (m[lane, hh] + np.log2(lt[lane])) * np.float32(T.LN2)
    return o, lse


# ---------------------------------------------------------------- float32 through TF32 (mma.m16n8k8 .tf32)
def tf32_round(x):
    "cvt.rna.tf32.f32: keep 10 fraction bits, round to nearest with ties away from zero (finite inputs)."
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32)


def _ptx_layout_tf32():
    """mma.m16n8k8 with .tf32 inputs, element-wise as in the PTX ISA (one element per register):
    A a_i (i = 0..3): row = groupID for i in {0, 2}, groupID + 8 for i in {1, 3}; col = threadID_in_group for i < 2,
    threadID_in_group + 4 for i >= 2.  B b_i (i = 0, 1): row = threadID_in_group + 4i; col = groupID."""
    ar, ac = np.zeros((32, 4), int), np.zeros((32, 4), int)
    br, bc = np.zeros((32, 2), int), np.zeros((32, 2), int)
    for lane in range(32):
        gid, tig = lane >> 2, lane % 4
        for i in range(4):
            ar[lane, i] = gid if i in (0, 2) else gid + 8
            ac[lane, i] = tig if i < 2 else tig + 4
        for i in range(2):
            br[lane, i] = tig + 4 * i
            bc[lane, i] = gid
    return ar, ac, br, bc


AR8, AC8, BR8, BC8 = _ptx_layout_tf32()


def mma_m16n8k8_tf32(a, b, c):
    "Emulated mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 on already TF32-valued float32 registers."
    A = np.zeros((16, 8))
    B = np.zeros((8, 8))
    C = np.zeros((16, 8))
    A[AR8, AC8] = a
    B[BR8, BC8] = b
    C[CR, CC] = c
    return (A @ B + C).astype(np.float32)[CR, CC]


def mma_helper_f32(a, b, c, mode):
    "What the helpers geobook_mma_tf32_1688 / geobook_mma_3xtf32_1688 compute, on float32 registers."
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    ab, bb = tf32_round(a), tf32_round(b)
    if mode == 'tf32':
        return mma_m16n8k8_tf32(ab, bb, c)
    as_, bs = tf32_round(a - ab), tf32_round(b - bb)
    c = mma_m16n8k8_tf32(as_, bb, c)
    c = mma_m16n8k8_tf32(ab, bs, c)
    return mma_m16n8k8_tf32(ab, bb, c)


def emulate_gemm_f32(A, B, mode='tf32'):
    "What gemm_f32_kernel(mode) computes for float32 A (M, K), B (K, N), lane by lane with the kernel's loaders."
    h = helpers('bfloat16')
    M, K = A.shape
    N = B.shape[1]
    C = np.full((M, N), np.nan, np.float32)
    for r0 in range(0, M, 16):
        for n0 in range(0, N, 8):
            acc = np.zeros((32, 4), np.float32)
            for k0 in range(0, K, 8):
                a = np.array([h['load_a_tf32'](A, r0, k0, lane) for lane in range(32)], np.float32)
                b = np.array([h['load_b_tf32'](B, k0, n0, lane) for lane in range(32)], np.float32)
                acc = mma_helper_f32(a, b, acc, mode)
            for lane in range(32):
                h['store_c_frag'](C, r0, n0, lane, *acc[lane])
    return C
