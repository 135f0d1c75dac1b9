// Tensor-core helpers for geobook's Numba CUDA attention kernels (chapter 5, nbs/05_fused_attention.ipynb).
// Package data of geobook: geobook/attention.py links this file into its kernels with
// numba.cuda.declare_device(..., link=[<this file>]) and compiles them with lto=True, so the helpers are inlined.
//
// Each function wraps ONE warp-wide PTX instruction in inline asm. They follow Numba's device-function ABI
// (declare_device(..., abi='numba')): the first argument points at the return value, the int result is a status
// code (0 = no exception). Every lane of the warp must call the mma helpers together, with the same shapes
// (mma.sync.aligned), i.e. never under lane-divergent control flow.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32:   D (16x8, f32) = A (16x16) @ B (16x8) + C
//
// Fragment layout (PTX ISA, "Matrix fragments for mma.m16n8k16 with floating point type"), in lane terms:
// write lane = 4*g + t with g = lane >> 2 in 0..7 (the "group") and t = lane & 3 in 0..3 (the thread in the group).
//   A (16 rows m x 16 cols k, "row"): four 32-bit registers a0..a3, each holding two 16-bit values that are
//     neighbours along k; the value with the smaller k sits in the low 16 bits.
//         a0: row g,     k = 2t, 2t+1        a2: row g,     k = 2t+8, 2t+9
//         a1: row g + 8, k = 2t, 2t+1        a3: row g + 8, k = 2t+8, 2t+9
//   B (16 rows k x 8 cols n, "col": the pair in a register runs down a column of B): two 32-bit registers
//         b0: col n = g, k = 2t, 2t+1        b1: col n = g, k = 2t+8, 2t+9
//   C and D (16 x 8, f32): four registers, one element each
//         c0: row g, col 2t      c1: row g, col 2t+1      c2: row g+8, col 2t      c3: row g+8, col 2t+1
// So a lane's C/D registers of two horizontally adjacent 16x8 tiles (cols 0..7 and 8..15) are, after rounding pairs
// to 16 bits, exactly that lane's A registers of the 16x16 tile they form (c0c1 | c2c3 of the left tile = a0 | a1,
// of the right tile = a2 | a3): this is what lets FlashAttention-2 feed P = softmax(S) from registers into P @ V.

struct geobook_f32x4 { float v[4]; };      // matches Numba's UniTuple(float32, 4) (an LLVM [4 x float])

extern "C" __device__ int geobook_mma_bf16_16816(geobook_f32x4 *ret,
                                                 unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                                 unsigned b0, unsigned b1,
                                                 float c0, float c1, float c2, float c3)
{
    float d0, d1, d2, d3;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    ret->v[0] = d0; ret->v[1] = d1; ret->v[2] = d2; ret->v[3] = d3;
    return 0;
}

extern "C" __device__ int geobook_mma_f16_16816(geobook_f32x4 *ret,
                                                unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                                unsigned b0, unsigned b1,
                                                float c0, float c1, float c2, float c3)
{
    float d0, d1, d2, d3;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"
        : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
    ret->v[0] = d0; ret->v[1] = d1; ret->v[2] = d2; ret->v[3] = d3;
    return 0;
}

// Two float32 -> one 32-bit register of two bf16, rounded to nearest even: lo in bits 0..15, hi in bits 16..31.
// (cvt.rn.bf16x2.f32 d, a, b puts a in the upper half and b in the lower half.)
extern "C" __device__ int geobook_pack_bf16x2(unsigned *ret, float lo, float hi)
{
    unsigned d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    *ret = d;
    return 0;
}

// The same for float16 (cvt.rn.f16x2.f32, same operand order).
extern "C" __device__ int geobook_pack_f16x2(unsigned *ret, float lo, float hi)
{
    unsigned d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    *ret = d;
    return 0;
}

// ---------------------------------------------------------------- float32 inputs through TF32 tensor cores
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32:   D (16x8, f32) = A (16x8) @ B (8x8) + C, one element per register
//   A: a0 (row g, k t)   a1 (row g+8, k t)   a2 (row g, k t+4)   a3 (row g+8, k t+4)
//   B: b0 (k t, col g)   b1 (k t+4, col g)
//   C/D: as for m16n8k16.
// The float32 operands are rounded to TF32 (10-bit fraction, to nearest, ties away from zero) by cvt.rna.tf32.f32.

__device__ __forceinline__ unsigned geobook_tf32(float x)
{
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ void geobook_mma_tf32_raw(float &d0, float &d1, float &d2, float &d3,
                                                     unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                                     unsigned b0, unsigned b1)
{
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One TF32 product: D = tf32(A) tf32(B) + C.
extern "C" __device__ int geobook_mma_tf32_1688(geobook_f32x4 *ret, float a0, float a1, float a2, float a3,
                                                float b0, float b1, float c0, float c1, float c2, float c3)
{
    geobook_mma_tf32_raw(c0, c1, c2, c3, geobook_tf32(a0), geobook_tf32(a1), geobook_tf32(a2), geobook_tf32(a3),
                         geobook_tf32(b0), geobook_tf32(b1));
    ret->v[0] = c0; ret->v[1] = c1; ret->v[2] = c2; ret->v[3] = c3;
    return 0;
}

// 3xTF32: x = big + small with big = tf32(x), small = tf32(x - big); E = As Bb + Ab Bs + Ab Bb (the As Bs term,
// ~2^-22 relative, is dropped; small terms first so they are not absorbed), D = C + E. E starts from zero and is added
// to C by an ordinary float32 addition (round to nearest): the tensor core rounds its own additions toward zero, and
// with C inside the mma the three additions per k-step made the error grow with K (measured on an H200: 4.7e-4 at
// K = 520, six times the bfloat16 GEMM's). About float32 accuracy at 3 mma each.
extern "C" __device__ int geobook_mma_3xtf32_1688(geobook_f32x4 *ret, float a0, float a1, float a2, float a3,
                                                  float b0, float b1, float c0, float c1, float c2, float c3)
{
    unsigned ab0 = geobook_tf32(a0), ab1 = geobook_tf32(a1), ab2 = geobook_tf32(a2), ab3 = geobook_tf32(a3);
    unsigned bb0 = geobook_tf32(b0), bb1 = geobook_tf32(b1);
    unsigned as0 = geobook_tf32(a0 - __uint_as_float(ab0)), as1 = geobook_tf32(a1 - __uint_as_float(ab1));
    unsigned as2 = geobook_tf32(a2 - __uint_as_float(ab2)), as3 = geobook_tf32(a3 - __uint_as_float(ab3));
    unsigned bs0 = geobook_tf32(b0 - __uint_as_float(bb0)), bs1 = geobook_tf32(b1 - __uint_as_float(bb1));
    float e0 = 0.f, e1 = 0.f, e2 = 0.f, e3 = 0.f;
    geobook_mma_tf32_raw(e0, e1, e2, e3, as0, as1, as2, as3, bb0, bb1);
    geobook_mma_tf32_raw(e0, e1, e2, e3, ab0, ab1, ab2, ab3, bs0, bs1);
    geobook_mma_tf32_raw(e0, e1, e2, e3, ab0, ab1, ab2, ab3, bb0, bb1);
    c0 += e0; c1 += e1; c2 += e2; c3 += e3;
    ret->v[0] = c0; ret->v[1] = c1; ret->v[2] = c2; ret->v[3] = c3;
    return 0;
}
