"""GPU check of the tensor-core prototype (needs an NVIDIA GPU with sm_80+, torch with CUDA, numba-cuda, nvJitLink).

  python gpu_check.py [--out DIR]      # writes DIR/gpu_check.json (default: ./out), exit 1 on any failure

1. GEMM kernel vs torch.matmul in float32 (TF32 off) on the same 16-bit inputs, bf16 and f16, ragged shapes;
   float32 GEMM through TF32 and 3xTF32 vs float64.
2. GEMM kernel vs the NumPy emulator (emulate.py) on small shapes: the emulator's layout against the hardware.
3. Attention kernel vs float64 softmax attention (and torch SDPA in float32) on the same 16-bit inputs, ragged N_q,
   N_k, bf16 and f16; output and log-sum-exp; and vs the emulator on one small case.
4. Registers / local memory / shared memory per kernel as the driver reports them; one timing of the attention
   kernel against SDPA (same dtype) at BH = 16, N = 4096, D = 64 (CUDA events, 3 warm-up + 10 timed runs).
Runs in well under 2 minutes (compilation dominates).

  python gpu_check.py --dry-run-cpu    # no GPU: the same checks with the kernels replaced by the NumPy emulator on
                                       # small shapes (tests this script's plumbing and tolerances, not the GPU)
"""
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from numba import cuda

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tc_kernels as T   # noqa: E402
import emulate as E      # noqa: E402

TORCH_DT = {'bfloat16': torch.bfloat16, 'float16': torch.float16}
DRY = '--dry-run-cpu' in sys.argv
_jitted = {}


def _bits(t):
    return t.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)


def _kernel(kind, dtype):
    if (kind, dtype) not in _jitted:
        if kind == 'gemm':
            _jitted[kind, dtype] = cuda.jit(lto=True)(T.gemm_kernel(dtype))
        elif kind == 'gemm_f32':
            _jitted[kind, dtype] = cuda.jit(lto=True)(T.gemm_f32_kernel(dtype))
        else:
            _jitted[kind, dtype] = cuda.jit(lto=True, launch_bounds=T.FWD_LAUNCH_BOUNDS)(T.flash_fwd_kernel(dtype))
    return _jitted[kind, dtype]


def _u16(t):
    "A contiguous 16-bit CUDA tensor as a Numba uint16 device array of its bits (no copy)."
    return cuda.as_cuda_array(t.contiguous().view(torch.int16)).view(np.uint16)


def _u32(t):
    "A contiguous 16-bit CUDA tensor with an even last dimension as uint32 words holding pairs of neighbours."
    return cuda.as_cuda_array(t.contiguous().view(torch.int32)).view(np.uint32)


def _stream():
    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def gemm(A, B):
    "C = A @ B (float32) for 16-bit CUDA tensors A (M, K), B (K, N)."
    dtype = {v: k for k, v in TORCH_DT.items()}[A.dtype]
    if DRY:
        return torch.from_numpy(E.emulate_gemm(_bits(A), _bits(B), dtype))
    M, K = A.shape
    N = B.shape[1]
    C = torch.empty(M, N, device=A.device, dtype=torch.float32)
    grid = (-(-N // (8 * T.WARPS)), -(-M // 16))
    _kernel('gemm', dtype)[grid, 32 * T.WARPS, _stream()](_u16(A), _u16(B), cuda.as_cuda_array(C))
    return C


def gemm_f32(A, B, mode):
    "C = A @ B for float32 CUDA tensors on TF32 tensor cores, mode 'tf32' or '3xtf32'."
    if DRY:
        return torch.from_numpy(E.emulate_gemm_f32(A.numpy(), B.numpy(), mode))
    M, K = A.shape
    N = B.shape[1]
    C = torch.empty(M, N, device=A.device, dtype=torch.float32)
    grid = (-(-N // (8 * T.WARPS)), -(-M // 16))
    _kernel('gemm_f32', mode)[grid, 32 * T.WARPS, _stream()](*(cuda.as_cuda_array(x.contiguous()) for x in (A, B, C)))
    return C


def flash_fwd(q, k, v, scale):
    "(o float32, lse float32) of softmax attention for 16-bit CUDA tensors q (BH, N_q, 64), k, v (BH, N_k, 64)."
    dtype = {v_: k_ for k_, v_ in TORCH_DT.items()}[q.dtype]
    if DRY:
        o, lse = E.emulate_flash_fwd(_bits(q), _bits(k), _bits(v), scale, dtype)
        return torch.from_numpy(o), torch.from_numpy(lse)
    BH, Nq, D = q.shape
    assert D == T.D_HEAD
    o = torch.empty(BH, Nq, D, device=q.device, dtype=torch.float32)
    lse = torch.empty(BH, Nq, device=q.device, dtype=torch.float32)
    grid = (-(-Nq // T.BQ), BH)
    _kernel('fwd', dtype)[grid, 32 * T.WARPS, _stream()](_u32(q), _u32(k), _u16(v), cuda.as_cuda_array(o),
                                                         cuda.as_cuda_array(lse), np.float32(scale * T.LOG2E))
    return o, lse


def main():
    out_dir = Path(sys.argv[sys.argv.index('--out') + 1]) if '--out' in sys.argv else HERE / 'out'
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device('cpu' if DRY else 'cuda')
    small = (lambda *dims: math.prod(dims) <= 70000) if DRY else (lambda *dims: True)
    res = {'versions': {'torch': torch.__version__, 'cuda': torch.version.cuda,
                        'gpu': 'none: --dry-run-cpu' if DRY else torch.cuda.get_device_name(),
                        'cc': None if DRY else list(torch.cuda.get_device_capability())},
           'checks': {}, 'failures': []}
    try:
        import importlib.metadata as md
        res['versions'].update({p: md.version(p) for p in ('numba', 'numba-cuda', 'nvidia-nvjitlink')})
    except Exception as e:                       # noqa: BLE001
        res['versions']['error'] = repr(e)
    g = torch.Generator(device='cpu').manual_seed(0)

    def record(name, err, tol, **extra):
        ok = bool(np.isfinite(err) and err <= tol)
        res['checks'][name] = {'max_err': float(err), 'tol': tol, 'ok': ok, **extra}
        print(f'{name:55s} max err {err:.3e}  tol {tol:.1e}  {"ok" if ok else "FAIL"}')
        if not ok:
            res['failures'].append(name)

    t0 = time.time()
    for dtype, tdt in TORCH_DT.items():
        # 1. GEMM vs torch.matmul (float32 on the same 16-bit values)
        for M, K, N in filter(lambda s: small(*s), [(16, 16, 8), (128, 256, 64), (1000, 520, 300), (33, 17, 9)]):
            A = torch.randn(M, K, generator=g).to(tdt).to(dev)
            B = torch.randn(K, N, generator=g).to(tdt).to(dev)
            C = gemm(A, B)
            ref = torch.matmul(A.double(), B.double())
            err = ((C.double() - ref).abs() / (1 + ref.abs())).max().item()
            record(f'gemm {dtype} {M}x{K}x{N} vs float64 matmul', err, 1e-5 * math.sqrt(K))
            ref32 = torch.matmul(A.float(), B.float())
            record(f'gemm {dtype} {M}x{K}x{N} vs float32 torch.matmul', (C - ref32).abs().max().item(),
                   1e-4 * math.sqrt(K))
        # 2. GEMM vs the emulator
        A = torch.randn(40, 56, generator=g).to(tdt)
        B = torch.randn(56, 20, generator=g).to(tdt)
        Cg = gemm(A.to(dev), B.to(dev)).cpu().numpy()
        Ce = E.emulate_gemm(A.view(torch.int16).numpy().view(np.uint16), B.view(torch.int16).numpy().view(np.uint16),
                            dtype)
        record(f'gemm {dtype} 40x56x20 GPU vs NumPy emulator', np.abs(Cg - Ce).max(), 5e-5)
        # 3. attention vs float64 reference, SDPA float32, emulator
        for BH, Nq, Nk in filter(lambda s: small(*s), [(2, 64, 64), (3, 200, 300), (1, 1, 1), (2, 4096, 4096)]):
            q, k, v = (torch.randn(BH, n, 64, generator=g).to(tdt).to(dev) for n in (Nq, Nk, Nk))
            scale = 1 / 8
            o, lse = flash_fwd(q, k, v, scale)
            s = torch.einsum('bqd,bkd->bqk', q.double(), k.double()) * scale
            lref = torch.logsumexp(s, -1)
            oref = torch.einsum('bqk,bkd->bqd', torch.exp(s - lref[..., None]), v.double())
            tol = 4e-3 if dtype == 'bfloat16' else 5e-4
            record(f'fwd {dtype} BH={BH} Nq={Nq} Nk={Nk}: O vs float64', (o.double() - oref).abs().max().item(), tol)
            record(f'fwd {dtype} BH={BH} Nq={Nq} Nk={Nk}: lse vs float64', (lse.double() - lref).abs().max().item(),
                   1e-4)
            sd = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)
            record(f'fwd {dtype} BH={BH} Nq={Nq} Nk={Nk}: O vs SDPA float32', (o - sd).abs().max().item(), tol)
            del s, oref
        q, k, v = (torch.randn(1, n, 64, generator=g).to(tdt) for n in (80, 100, 100))
        og, lg = flash_fwd(q.to(dev), k.to(dev), v.to(dev), 0.125)
        oe, le = E.emulate_flash_fwd(*(x.view(torch.int16).numpy().view(np.uint16) for x in (q, k, v)), 0.125, dtype)
        record(f'fwd {dtype} 80x100 GPU vs NumPy emulator (O)', np.abs(og.cpu().numpy() - oe).max(), 2e-3)
        record(f'fwd {dtype} 80x100 GPU vs NumPy emulator (lse)', np.abs(lg.cpu().numpy() - le).max(), 1e-5)
    # float32 GEMM through TF32 / 3xTF32, vs float64, and vs the emulator
    for mode, tol in (('tf32', 5e-3), ('3xtf32', 2e-5)):   # tf32: 2^-11 relative per operand, random walk over K
        for M, K, N in filter(lambda s: small(*s), [(128, 256, 64), (1000, 520, 300), (33, 17, 9)]):
            A = torch.randn(M, K, generator=g).to(dev)
            B = torch.randn(K, N, generator=g).to(dev)
            C = gemm_f32(A, B, mode)
            ref = torch.matmul(A.double(), B.double())
            record(f'gemm_f32 {mode} {M}x{K}x{N} vs float64 (|err| / sqrt(K))',
                   (C.double() - ref).abs().max().item() / math.sqrt(K), tol)
        A = torch.randn(37, 21, generator=g)
        B = torch.randn(21, 13, generator=g)
        Cg = gemm_f32(A.to(dev), B.to(dev), mode).cpu().numpy()
        record(f'gemm_f32 {mode} 37x21x13 GPU vs NumPy emulator', np.abs(Cg - E.emulate_gemm_f32(A.numpy(), B.numpy(),
                                                                                                 mode)).max(), 5e-5)
    res['check_seconds'] = time.time() - t0
    if DRY:
        (out_dir / 'gpu_check_dry.json').write_text(json.dumps(res, indent=1))
        print('FAILURES:' if res['failures'] else 'OK (dry run on the CPU emulator)', *res['failures'], sep='\n  ')
        return 1 if res['failures'] else 0
    torch.cuda.synchronize()
    # 4. resources and one timing
    for (kind, dtype), kern in _jitted.items():
        sig = list(kern.overloads)[0]
        res[f'resources {kind} {dtype}'] = {'regs': kern.get_regs_per_thread(sig),
                                            'local_bytes': kern.get_local_mem_per_thread(sig),
                                            'shared_bytes': kern.get_shared_mem_per_block(sig)}
        print(kind, dtype, res[f'resources {kind} {dtype}'])
    for dtype, tdt in TORCH_DT.items():
        q, k, v = (torch.randn(16, 4096, 64, device=dev).to(tdt) for _ in range(3))
        q4, k4, v4 = (x.view(1, 16, 4096, 64) for x in (q, k, v))
        times = {}
        for name, fn in [('geobook_tc', lambda: flash_fwd(q, k, v, 0.125)),
                         ('sdpa', lambda: torch.nn.functional.scaled_dot_product_attention(q4, k4, v4, scale=0.125))]:
            for _ in range(3):
                fn()
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            for _ in range(10):
                fn()
            en.record()
            torch.cuda.synchronize()
            times[name] = st.elapsed_time(en) / 10
        flops = 4 * 16 * 4096 * 4096 * 64
        res[f'timing {dtype} BH=16 N=4096 D=64 ms'] = times
        print(f'timing {dtype}: geobook {times["geobook_tc"]:.3f} ms ({flops / times["geobook_tc"] / 1e9:.1f} TFLOP/s)'
              f', SDPA {times["sdpa"]:.3f} ms, ratio {times["geobook_tc"] / times["sdpa"]:.2f}')
    (out_dir / 'gpu_check.json').write_text(json.dumps(res, indent=1))
    print('FAILURES:' if res['failures'] else 'OK', *res['failures'], sep='\n  ')
    return 1 if res['failures'] else 0


if __name__ == '__main__':
    sys.exit(main())
