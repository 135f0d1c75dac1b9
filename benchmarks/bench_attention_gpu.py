"""Chapter 5 on a real GPU, in one run that fits a short device budget (issue 18, part 3); started by benchmarks/gpu_run.sh.

1. Versions, the GPU, and which SDPA backends torch can use (and the CUDA kernels its default call launches).
2. Correctness of every Numba CUDA kernel against the float64 dense reference: output, log-sum-exp and dq/dk/dv, for
   full and causal attention (N_q = N_k, N_q > N_k with fully masked rows, N_q < N_k, D = 128), 1-D neighborhood
   attention with dilation and 2-D with a causal axis, and a bfloat16 input.
3. CUDA-event timings (warm-up, then 10 timed runs, fewer where one run is long: each row records its count) of
   `flash_attention(backend='cuda')` against SDPA with the same dtype, for N in {1024, 4096, 16384}, D in {64, 128},
   float32 and bfloat16, causal and not, forward and forward+backward (B = 1, H = 8); every row also times the simple
   one-thread-per-row kernels up to N = 4096 (`simple_s`, with geobook.attention._TILED_FORWARD = _TILED_BACKWARD =
   False) beside the tiled FlashAttention-2 kernels that backend='cuda' dispatches (`flash_s`); then 2-D neighborhood attention
   (64×64 grid, 7×7 window; the tiled kernels on 2-D patches, `na2d_64x64_k7_s`, and the simple kernel, `na2d_simple_s`)
   against full attention over the same 4096 tokens. Configurations run from small to large
   until the time budget (--budget-s) is spent; the rest are listed under `skipped`.
   These rows run with geobook.attention._TENSOR_CORES = 'never' (the tiled kernels of part 1).
4. Registers, local memory (stack/spills) and shared memory per compiled kernel, from numba-cuda.
5. Tensor cores (part 2; run after 2, before 3, key `tensor_cores`): the first-call check as a user meets it
   (bfloat16, float16, and float32 with fp32_precision 'tf32' and '3xtf32'), the tensor-core GEMM (bfloat16, float16,
   TF32, 3xTF32) and attention forward (bfloat16, float16 with gradients through the tensor-core backward at D = 64; float32 through
   TF32 (both kernel variants) and 3xTF32, against the derived bound `_tf32_bounds`) against float64 and against the
   NumPy emulator — the 16-bit forward also causal (N_q ≠ N_k both ways) and at D = 128 —, CUDA-event timings for
   N in {1024, 4096, 16384}, D = 64, full mask: tensor cores vs the tiled
   kernels vs SDPA (bfloat16 and float16 forward, bfloat16 fwd+bwd; float32 forward: TF32 in both variants and 3xTF32,
   through flash_attention and the bare kernel, vs the tiled float32 kernel and vs SDPA float32 with
   torch.backends.cuda.matmul.allow_tf32 off (the default) and on); then the bfloat16 forward causal at D = 64 and
   full and causal at D = 128, and the causal fwd+bwd (last: the budget cuts them first); the tensor-core backward
   (bfloat16 and float16, D = 64, full and causal) against the NumPy emulator; the kernels' registers. Dry run:
   the emulator stands in for the kernels.

`--only tensor_cores` runs section 5 alone (≤ 2 minutes on an H200, compilation included): it reads the JSON of an
earlier full run (`--base`, default benchmarks/results/attention_gpu.json), replaces its `tensor_cores` section and
writes the whole to `--out` (everything else kept; rows the time budget skips keep their earlier measurement, marked
`from_run`; the earlier section's record of a fixed failure, `fixed`, is carried over).

The JSON (default benchmarks/results/attention_gpu.json) is rewritten after every step, so a run cut short by the
outer `timeout` still leaves what it measured. `--dry` runs everything under Numba's CUDA simulator on tiny shapes on
the CPU (NUMBA_ENABLE_CUDASIM=1 must be set before numba is imported: gpu_run.sh --dry does it), with wall-clock
timers, writing /tmp/attention_gpu_dry.json: it shows the script parses, imports and runs, not how fast anything is.
"""
from __future__ import annotations
import argparse, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np
import torch
from _bench import machine_info, _version
import geobook.attention as A
from geobook.attention import (flash_attention, attention_reference, neighborhood_attention,
                               neighborhood_attention_reference)

sdpa = torch.nn.functional.scaled_dot_product_attention
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}


class Run:
    "The measurement's state: device, timers, the time budget and the JSON written after every step."
    def __init__(self, dry: bool, out: str, budget_s: float):
        self.dry, self.out, self.t0, self.budget_s = dry, Path(out), time.perf_counter(), budget_s
        self.device = 'cpu' if dry else 'cuda'
        self.stamp = True               # save() records the elapsed time at the top level (not with --only)
        self.result = {'benchmark': 'attention_gpu', 'dry_run_on_simulator': dry, 'budget_s': budget_s,
                       'rows': [], 'skipped': []}

    def left(self) -> float: return self.budget_s - (time.perf_counter() - self.t0)

    def sync(self):
        if not self.dry: torch.cuda.synchronize()

    def save(self):
        if self.stamp: self.result['elapsed_s'] = round(time.perf_counter() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1) + '\n')

    def time(self, fn, max_reps: int = 10, cap_s: float = 6.0) -> dict:
        """Median seconds of fn() after one warm-up: CUDA events on a GPU, wall clock on the simulator. host_s: the
        host's wall-clock time per call of the same back-to-back calls, before the final synchronize (the Python work
        and launches; a call that synchronises inside waits for its kernel there, so it also counts the GPU time)."""
        t = time.perf_counter(); fn(); self.sync(); first = time.perf_counter() - t
        reps = 1 if self.dry else int(max(3, min(max_reps, cap_s // max(first, 1e-6))))
        if self.dry:
            ts = []
            for _ in range(reps):
                t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
            host = sum(ts) / reps
        else:
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            t = time.perf_counter()
            for a, b in ev: a.record(); fn(); b.record()
            host = (time.perf_counter() - t) / reps
            torch.cuda.synchronize()
            ts = [a.elapsed_time(b) / 1e3 for a, b in ev]
        ts.sort()
        return {'median_s': ts[len(ts) // 2], 'min_s': ts[0], 'reps': reps, 'first_s': first, 'host_s': host}


def versions(run: Run) -> dict:
    v = {'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'numba': _version('numba'),
         'numba_cuda': _version('numba-cuda'), 'numpy': _version('numpy')}
    if not run.dry:
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=p.name, capability=f'{p.major}.{p.minor}', sms=p.multi_processor_count,
                 memory_gb=round(p.total_memory / 2**30, 1))
    return v


def sdpa_backends(run: Run) -> dict:
    "Which SDPA backends accept a (1, 8, 256, 64) call per dtype, and the kernels the default call launches."
    from torch.nn.attention import sdpa_kernel, SDPBackend
    out = {}
    for name, dt in DTYPES.items():
        q = torch.randn(1, 8, 256, 64, device=run.device, dtype=dt)
        usable = {}
        for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel([b]): sdpa(q, q, q)
                usable[b.name] = True
            except Exception:               # noqa: BLE001 - an unusable backend is what we record
                usable[b.name] = False
        kernels = []
        if not run.dry:
            try:                                # needs CUPTI; its absence must not cost the run
                from torch.profiler import profile, ProfilerActivity
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    sdpa(q, q, q); torch.cuda.synchronize()
                kernels = sorted({e.key for e in prof.key_averages()})[:8]
            except Exception as e:              # noqa: BLE001
                kernels = [f'profiler unavailable: {e!r}'[:200]]
        out[name] = {'usable': usable, 'default_call_kernels': kernels}
    return out


CHECKS = [  # name, function, reference, q shape, k/v shape, keyword arguments (GPU shapes; the dry run shrinks them)
    ('flash_full', 'flash', (2, 3, 300, 64), (2, 3, 300, 64), {}),
    ('flash_causal', 'flash', (2, 3, 300, 64), (2, 3, 300, 64), {'causal': True}),
    ('flash_causal_nq_gt_nk_d128', 'flash', (1, 2, 150, 128), (1, 2, 97, 128), {'causal': True}),
    ('flash_causal_nq_lt_nk', 'flash', (1, 2, 70, 32), (1, 2, 260, 32), {'causal': True}),
    ('na1d_k9_dil3', 'na', (1, 2, 500, 32), (1, 2, 500, 32), {'kernel_size': 9, 'dilation': 3}),
    ('na2d_k5x7_causal', 'na', (1, 2, 24, 30, 32), (1, 2, 24, 30, 32),
     {'kernel_size': (5, 7), 'dilation': (2, 1), 'causal': (False, True)}),
]
DRY_CHECKS = {'flash_full': ((1, 1, 40, 8), (1, 1, 40, 8)), 'flash_causal': ((1, 1, 40, 8), (1, 1, 40, 8)),
              'flash_causal_nq_gt_nk_d128': ((1, 1, 30, 8), (1, 1, 17, 8)),
              'flash_causal_nq_lt_nk': ((1, 1, 17, 8), (1, 1, 45, 8)),
              'na1d_k9_dil3': ((1, 1, 60, 8), (1, 1, 60, 8)), 'na2d_k5x7_causal': ((1, 1, 10, 8, 8), (1, 1, 10, 8, 8))}


def check(run: Run) -> dict:
    out = {}
    fns = {'flash': (flash_attention, attention_reference), 'na': (neighborhood_attention, neighborhood_attention_reference)}
    for i, (name, kind, sq, sk, kw) in enumerate(CHECKS):
        if run.dry: sq, sk = DRY_CHECKS[name]
        fn, ref = fns[kind]
        for dname in ('float32', 'bfloat16') if name == 'flash_causal' else ('float32',):
            g = torch.Generator().manual_seed(i)
            q, k, v, do = (torch.randn(*s, generator=g) for s in (sq, sk, sk, sq))
            dl = torch.randn(*sq[:-1], generator=g)
            dt = DTYPES[dname]
            q, k, v = (t.to(dt) for t in (q, k, v))          # the reference gets the same (rounded) inputs
            qc, kc, vc = (t.detach().to(run.device).requires_grad_() for t in (q, k, v))
            o, lse = fn(qc, kc, vc, return_lse=True, backend='cuda', **kw)
            fin = torch.isfinite(lse)
            ((o.float() * do.to(run.device)).sum() + (torch.where(fin, lse, 0).float() * dl.to(run.device)).sum()).backward()
            q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
            o2, lse2 = ref(q2, k2, v2, return_lse=True, **kw)
            fin2 = torch.isfinite(lse2)
            ((o2 * do.double()).sum() + (torch.where(fin2, lse2, 0) * dl.double()).sum()).backward()
            e = lambda a, b: float((a.detach().cpu().double() - b.detach()).abs().max())
            key = name if dname == 'float32' else f'{name}_{dname}'
            out[key] = {'o': e(o, o2), 'lse': e(torch.where(fin, lse, 0), torch.where(fin2, lse2, 0)),
                        'dq': e(qc.grad, q2.grad), 'dk': e(kc.grad, k2.grad), 'dv': e(vc.grad, v2.grad),
                        'masked_rows': int((~fin2).sum()), 'masked_rows_agree': bool(torch.equal(fin.cpu(), fin2)),
                        'dtype': dname, 'device': str(o.device)}
            scale = {'o': o2, 'lse': torch.where(fin2, lse2, 0), 'dq': q2.grad, 'dk': k2.grad, 'dv': v2.grad}
            out[key]['relative'] = {n: out[key][n] / max(float(t.detach().abs().max()), 1e-30) for n, t in scale.items()}
            print('check', key, {k_: (f'{x:.1e}' if isinstance(x, float) else x) for k_, x in out[key].items()},
                  flush=True)
    return out


def configs(run: Run, quick: bool):
    "(N, D, dtype, causal, pass) from small to large: what fits the budget is measured."
    Ns = [64] if run.dry else ([1024, 4096] if quick else [1024, 4096, 16384])
    Ds = [16] if run.dry else [64, 128]
    return [(N, D, dt, causal, passes) for N in Ns for D in Ds for dt in DTYPES for causal in (False, True)
            for passes in ('forward', 'fwd+bwd')]


DEFAULT_BUDGET_S = 330.0
SIMPLE_MAX_N = 4096      # the simple kernels are timed up to this N (beyond, one call takes seconds: the budget)


def timings(run: Run, quick: bool):
    A._TENSOR_CORES = 'never'       # these rows measure the tiled kernels (part 1); tensor cores: see tensor_cores()
    try:
        _timings(run, quick)
    finally:
        A._TENSOR_CORES = 'auto'


def _step(f, passes, q, k, v, do):
    "The timed call: f(q, k, v) ('forward'), or f(q, k, v).backward(do) with the gradients cleared first ('fwd+bwd')."
    if passes == 'forward': return lambda: f(q, k, v)
    def step():
        q.grad = k.grad = v.grad = None
        f(q, k, v).backward(do)
    return step


def _timings(run: Run, quick: bool):
    B, H = (1, 1) if run.dry else (1, 8)
    for N, D, dname, causal, passes in configs(run, quick):
        cfg = {'pass': passes, 'N': N, 'D': D, 'dtype': dname, 'causal': causal, 'B': B, 'H': H}
        if run.left() <= 0:
            run.result['skipped'].append({**cfg, 'why': 'time budget spent'}); continue
        g = torch.Generator().manual_seed(N + D)
        q, k, v, do = (torch.randn(B, H, N, D, generator=g).to(run.device, DTYPES[dname]) for _ in range(4))
        if passes == 'fwd+bwd':
            for t in (q, k, v): t.requires_grad_()
        make = lambda f: _step(f, passes, q, k, v, do)
        ours = make(lambda a, b, c: flash_attention(a, b, c, causal=causal, backend='cuda'))
        theirs = make(lambda a, b, c: sdpa(a, b, c, is_causal=causal))     # N_q = N_k: the same mask
        a = run.time(ours); b = run.time(theirs)
        row = {**cfg, 'flash_s': a['median_s'], 'sdpa_s': b['median_s'], 'flash_reps': a['reps'],
               'sdpa_reps': b['reps'], 'flash_min_s': a['min_s'], 'sdpa_min_s': b['min_s'],
               'ratio': a['median_s'] / b['median_s']}
        if N <= SIMPLE_MAX_N:                    # the simple kernels beside the tiled ones, same inputs
            A._TILED_FORWARD = A._TILED_BACKWARD = False
            try:
                c = run.time(ours)
            finally:
                A._TILED_FORWARD = A._TILED_BACKWARD = True
            row.update(simple_s=c['median_s'], simple_reps=c['reps'], simple_ratio=c['median_s'] / b['median_s'])
        run.result['rows'].append(row); run.save()
        print(f"[{passes:7} N={N:5d} D={D:3d} {dname:8} causal={causal!s:5}] geobook {1e3 * a['median_s']:9.2f} ms "
              f"({a['reps']}) | sdpa {1e3 * b['median_s']:8.3f} ms ({b['reps']}) | ratio {row['ratio']:7.1f}"
              + (f" | simple {1e3 * row['simple_s']:9.2f} ms" if 'simple_s' in row else ''), flush=True)


def neighborhood(run: Run):
    if run.left() <= 0:
        run.result['skipped'].append({'what': 'na2d_64x64_k7', 'why': 'time budget spent'}); return
    side, H, D = (8, 1, 16) if run.dry else (64, 8, 64)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, H, side * side, D, generator=g).to(run.device) for _ in range(3))
    r = lambda t: t.reshape(1, H, side, side, D)
    na = run.time(lambda: neighborhood_attention(r(q), r(k), r(v), 7, backend='cuda'))      # tiled, 2-D patches
    A._TILED_FORWARD = False                                     # the simple kernel (one thread per query), for comparison
    try: simple = run.time(lambda: neighborhood_attention(r(q), r(k), r(v), 7, backend='cuda'))
    finally: A._TILED_FORWARD = True
    full = run.time(lambda: flash_attention(q, k, v, backend='cuda'))
    run.result.update(na2d_64x64_k7_s=na['median_s'], na2d_simple_s=simple['median_s'], flash_full_4096_s=full['median_s'],
                      na2d_grid=side, na2d_kernel='tiled, 2-D patches')
    print('NA 2-D', side, 'x', side, 'k=7: tiled', na['median_s'], 's, simple', simple['median_s'],
          's; full attention:', full['median_s'], 's', flush=True)


# ---------------------------------------------------------------- tensor cores (issue 18, part 2)
TC_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}
TC_CHECKS = [(2, 80, 100), (3, 200, 300), (1, 1, 1), (2, 1000, 1500)]     # (BH, N_q, N_k), D = 64, full mask
TC_DRY_CHECKS = [(1, 20, 70), (1, 1, 1)]
TC_VARIANTS = [(64, False), (64, True), (128, False), (128, True)]   # (D, causal) of the 16-bit forward's checks
TC_VARIANT_CHECKS = [(2, 80, 100), (2, 100, 37), (1, 300, 200)]      # (BH, N_q, N_k) of the causal and D = 128 ones
TC_VARIANT_DRY_CHECKS = [(1, 20, 9)]                                # (N_q > N_k: rows without keys)
TC_VARIANT_ROWS = [(64, True, 'forward'), (128, False, 'forward'), (128, True, 'forward'), (64, True, 'fwd+bwd')]
                                                               # bfloat16 timings beyond D = 64, full
TC_NS = [1024, 4096, 16384]
TF32 = ('tf32', '3xtf32')                # float32 through TF32 tensor cores: flash_attention(fp32_precision=...)
TF32_KINDS = ('fwd', 'fwd_qreg')         # the two variants: Q tile in shared memory (32-key tiles), Q in registers (64)


def _kinds(prec):
    "The kernel variants built for `prec` (3xTF32 has no Q-in-registers variant: A._TF32_BK)."
    return [k for k in TF32_KINDS if (prec, k == 'fwd_qreg') in A._TF32_BK]
TF32_CHECKS = [(2, 80, 100), (3, 200, 300), (1, 1, 1), (2, 1000, 1500)]
TF32_DRY_CHECKS = [(1, 20, 70)]


def _emulated_forward_mma_tf32(q, k, v, scale, precision, causal=False):
    "The dry run's stand-in for A._forward_mma on float32 (CPU tensors): the NumPy emulator of the _TF32_KIND variant."
    D = q.shape[-1]
    if D != A._MMA_D: q, k, v = (torch.nn.functional.pad(t, (0, A._MMA_D - D)) for t in (q, k, v))
    o, m, lam = A._emulate_flash_fwd_tf32(*(t.detach().numpy() for t in (q, k, v)), scale, precision,
                                          qreg=A._TF32_KIND == 'fwd_qreg', causal=causal)
    return torch.from_numpy(o)[..., :D].contiguous(), torch.from_numpy(np.stack([m, lam]))


def _emulated_forward_mma(q, k, v, scale, precision='ieee', mask=None):
    "The dry run's stand-in for A._forward_mma: the NumPy emulator of the same kernel (CPU tensors, D ≤ 128)."
    causal = mask is not None and mask.kind == 'causal'
    if q.dtype == torch.float32: return _emulated_forward_mma_tf32(q, k, v, scale, precision, causal)
    D, W = q.shape[-1], A._mma_width(q, precision)
    if D != W: q, k, v = (torch.nn.functional.pad(t, (0, W - D)) for t in (q, k, v))
    bits = lambda t: t.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
    o, m, lam = A._emulate_flash_fwd(bits(q), bits(k), bits(v), scale, A._KERNEL_DTYPES[q.dtype], causal=causal)
    return torch.from_numpy(o)[..., :D].contiguous(), torch.from_numpy(np.stack([m, lam]))


def _emulated_backward_mma(q, k, v, do, ml, delta, scale, mask):
    "The dry run's stand-in for A._backward_mma: the NumPy emulators of the same two kernels (CPU tensors, D ≤ 64)."
    D, causal, dt = q.shape[-1], mask.kind == 'causal', A._KERNEL_DTYPES[q.dtype]
    b = [_bits16(torch.nn.functional.pad(t.to(q.dtype), (0, A._MMA_D - D))) for t in (q, k, v, do)]
    m, lam = ml.contiguous().numpy()
    dq = A._emulate_bwd_dq(*b, m, lam, delta.contiguous().numpy(), scale, dt, causal)
    dk, dv = A._emulate_bwd_dkdv(*b, m, lam, delta.contiguous().numpy(), scale, dt, causal)
    return tuple(torch.from_numpy(x)[..., :D].contiguous() for x in (dq, dk, dv))


def _bits16(t):
    return t.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint16)


def _gemm_mma(run, X, Y, dtype):
    "C = X @ Y by the tensor-core GEMM kernel (16-bit X, Y for 'bfloat16'/'float16', float32 for 'tf32'/'3xtf32')."
    half = dtype in TC_DTYPES
    if run.dry:
        return torch.from_numpy(A._emulate_gemm(_bits16(X) if half else X.numpy(), _bits16(Y) if half else Y.numpy(),
                                                dtype))
    from numba import cuda
    M, N = X.shape[0], Y.shape[1]
    C = torch.empty(M, N, device=X.device, dtype=torch.float32)
    arr = lambda t: (cuda.as_cuda_array(t.contiguous().view(torch.int16)).view(np.uint16) if half
                     else cuda.as_cuda_array(t.contiguous()))
    A._launch_cuda(A._mma_kernel('gemm', dtype), (-(-N // (8 * A._MMA_WARPS)), -(-M // 16)), 32 * A._MMA_WARPS,
                   arr(X), arr(Y), C)
    return C


ACC_SHAPES = [(33, 17, 9), (1000, 520, 300), (1000, 4096, 300), (512, 16384, 256)]


def _accumulation(run: Run) -> dict:
    """How the GEMM error grows with K: max |C − X@Y (float64)| for X, Y ~ N(0, 1) float32 through TF32, 3xTF32 (each
    k-step summed into a fresh E, then C + E in float32), cuBLAS SGEMM (TF32 off) and the CPU's float32 product, and
    bfloat16 (rounded inputs against the exact product of those); seed 0. The 3xTF32 tolerance is the GEMM check's."""
    g = torch.Generator().manual_seed(0)
    acc = {'rows': {}, 'what': 'max |C - X@Y (float64)|; bfloat16: against the float64 product of the rounded inputs'}
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for M, K, N in ([(33, 17, 9)] if run.dry else ACC_SHAPES):
            X, Y = (torch.randn(*s, generator=g) for s in ((M, K), (K, N)))
            exact = X.double() @ Y.double()
            e = lambda C, ex=exact: float((C.cpu().double() - ex).abs().max())
            row = {d: e(_gemm_mma(run, X.to(run.device), Y.to(run.device), d)) for d in ('tf32', '3xtf32')}
            row['cublas_sgemm'] = None if run.dry else e(X.cuda() @ Y.cuda())
            row['cpu_float32'] = e(X @ Y)
            Xb, Yb = X.bfloat16(), Y.bfloat16()
            row['bfloat16'] = e(_gemm_mma(run, Xb.to(run.device), Yb.to(run.device), 'bfloat16'),
                                Xb.double() @ Yb.double())
            row['tol_3xtf32'] = 2e-5 * K ** 0.5
            acc['rows'][f'{M}x{K}x{N}'] = row
            print('tc accumulation', M, K, N, {k_: (f'{x:.2e}' if x is not None else x) for k_, x in row.items()},
                  flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow
    return acc


def _with_allow_tf32(fn):
    "fn() with torch.backends.cuda.matmul.allow_tf32 = True (torch's opt-in to TF32 matmuls), restored afterwards."
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')         # newer torch prefers fp32_precision and may say so
        allow = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = allow


def _gap(a, b) -> float:
    "max |a − b| over entries, where two −∞ (rows without keys) count 0 and one −∞ counts ∞."
    return float(torch.where(torch.isneginf(a) & torch.isneginf(b), torch.zeros_like(b), (a - b).abs()).max())


def _variant_checks(run: Run, g, record):
    """The 16-bit forward beyond D = 64 with the full mask: causal (N_q ≠ N_k both ways, rows without keys when
    N_q > N_k) and D = 128, through flash_attention (as dispatched: the tensor-core forward; the tensor-core backward at D = 64, else the tiled one) against
    float64 — O within the derived bound, L to 10⁻⁴ on rows with keys and −∞ on the others, gradients relative — and
    the bare kernel against the NumPy emulator of the same variant."""
    for dname, dt in list(TC_DTYPES.items())[:1 if run.dry else None]:     # the dry run (simulator): bfloat16 only
        for D, causal in TC_VARIANTS[1:]:
            for BH, Nq, Nk in (TC_VARIANT_DRY_CHECKS if run.dry else TC_VARIANT_CHECKS):
                q, k, v, do = (torch.randn(1, BH, n, D, generator=g).to(dt) for n in (Nq, Nk, Nk, Nq))
                qc, kc, vc = (t.detach().clone().to(run.device).requires_grad_() for t in (q, k, v))
                o, lse = flash_attention(qc, kc, vc, return_lse=True, backend='cuda', causal=causal)
                (o.float() * do.to(run.device).float()).sum().backward()
                q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
                o2, lse2 = attention_reference(q2, k2, v2, causal=causal, return_lse=True)
                (o2 * do.double()).sum().backward()
                e = lambda a, b: float((a.detach().cpu().double() - b.detach()).abs().max())
                tag = f"fwd {dname} D={D}{' causal' if causal else ''} BH={BH} Nq={Nq} Nk={Nk}"
                u = A._MMA_U[dt]
                record(f'{tag}: O vs float64', e(o, o2), A._mma_o_bound(dt, float(v.abs().max()), Nk)
                       + u * float(o2.detach().abs().max()))
                record(f'{tag}: L vs float64', _gap(lse.detach().cpu().double(), lse2.detach()), 1e-4)
                for n, a, b in (('dq', qc, q2), ('dk', kc, k2), ('dv', vc, v2)):
                    rel = e(a.grad, b.grad) / max(float(b.grad.abs().max()), 1e-30)
                    record(f'{tag}: {n} vs float64 (relative)', rel, 4 * u)
                if not run.dry and Nq * Nk <= 100 * 100:
                    oe, me, le = A._emulate_flash_fwd(*(_bits16(t[0]) for t in (q, k, v)), 1 / 8, dname, causal=causal)
                    mask = A._Mask('causal' if causal else 'full', off=Nk - Nq)
                    o_raw, ml = A._forward_mma(*(t[0].to(run.device).contiguous() for t in (q, k, v)), 1 / 8, 'ieee', mask)
                    record(f'{tag}: O vs emulator', float(np.abs(o_raw.cpu().numpy() - oe).max()), 2e-3)
                    record(f'{tag}: m, log2 l vs emulator', float(np.abs(ml.cpu().numpy() - np.stack([me, le])).max()), 1e-4)
                run.save()
    if not run.dry:                                # the backward kernels on hardware against their emulators
        for dname, dt in TC_DTYPES.items():
            for causal, (BH, Nq, Nk) in ((False, (2, 80, 100)), (True, (2, 100, 37))):
                rng = np.random.default_rng(Nq)
                bits = [A._MMA_ENCODE[dname](rng.standard_normal((BH, n, 64))) for n in (Nq, Nk, Nk, Nq)]
                ref = A._mma_bwd_reference(*bits, 1 / 8, dname, causal)
                st = (ref['mrow'], ref['lrow'], ref['delta'])
                emu = (A._emulate_bwd_dq(*bits, *st, 1 / 8, dname, causal), *A._emulate_bwd_dkdv(*bits, *st, 1 / 8, dname, causal))
                tq, tk, tv, tdo = (torch.from_numpy(A._MMA_DECODE[dname](b)).to(run.device, dt) for b in bits)
                ml = torch.from_numpy(np.stack(st[:2])).to(run.device)
                mask = A._Mask('causal' if causal else 'full', off=Nk - Nq)
                got = A._backward_mma(tq, tk, tv, tdo, ml, torch.from_numpy(st[2]).to(run.device), 1 / 8, mask)
                for n_, g_, e_ in zip(('dq', 'dk', 'dv'), got, emu):
                    record(f"bwd {dname}{' causal' if causal else ''} BH={BH} Nq={Nq} Nk={Nk}: {n_} vs emulator",
                           float(np.abs(g_.cpu().numpy() - e_).max()), 2e-3)
                run.save()


def _tf32_checks(run: Run, g, record, out):
    """float32 attention through TF32 (both kernel variants) and 3xTF32: O and L against float64 attention of the same
    float32 inputs within the derived bounds A._tf32_bounds (+ 10⁻⁶ for the float64 reference's own rounding of the
    output to float32), and, on small shapes, against the NumPy emulator of the same variant (same operand rounding;
    the sums' order and rounding inside mma differ: O within 2u·max|v| + 10⁻⁴ for TF32, where P may round the other
    way at a tie, 10⁻⁴ for 3xTF32; m and log₂ ℓ within 10⁻³)."""
    dev = run.device
    cases = [(BH, Nq, Nk, False) for BH, Nq, Nk in (TF32_DRY_CHECKS if run.dry else TF32_CHECKS)]
    cases += [(1, 20, 9, True)] if run.dry else [(2, 100, 37, True), (2, 80, 100, True)]   # causal (rows without keys)
    for prec in TF32:
        for kind in _kinds(prec):
            A._TF32_KIND = kind
            for BH, Nq, Nk, causal in cases:
                q, k, v = (torch.randn(1, BH, n, 64, generator=g) for n in (Nq, Nk, Nk))
                o, lse = flash_attention(q.to(dev), k.to(dev), v.to(dev), return_lse=True, backend='cuda',
                                         fp32_precision=prec, causal=causal)
                o2, lse2 = attention_reference(q.double(), k.double(), v.double(), return_lse=True, causal=causal)
                bo, bl = A._tf32_bounds(q, k, v, 1 / 8, prec)
                e = lambda a, b: _gap(a.detach().cpu().double(), b)
                tag = f"fwd {prec} {kind}{' causal' if causal else ''} BH={BH} Nq={Nq} Nk={Nk}"
                record(f'{tag}: O vs float64 (derived bound)', e(o, o2), bo + 1e-6, bound=bo)
                record(f'{tag}: L vs float64 (derived bound)', e(lse, lse2), bl + 1e-6, bound=bl)
                if not run.dry and Nq * Nk <= 100 * 100:
                    oe, me, le = A._emulate_flash_fwd_tf32(*(t[0].numpy() for t in (q, k, v)), 1 / 8, prec,
                                                           qreg=kind == 'fwd_qreg', causal=causal)
                    mask = A._Mask('causal' if causal else 'full', off=Nk - Nq)
                    o_raw, ml = A._forward_mma(*(t[0].to(dev).contiguous() for t in (q, k, v)), 1 / 8, prec, mask)
                    tol = (2 * A._TF32_U * float(v.abs().max()) if prec == 'tf32' else 0.0) + 1e-4
                    record(f'{tag}: O vs emulator', float(np.abs(o_raw.cpu().numpy() - oe).max()), tol)
                    record(f'{tag}: m, log2 l vs emulator', float(np.abs(ml.cpu().numpy() - np.stack([me, le])).max()), 1e-3)
                run.save()
    A._TF32_KIND = 'fwd'
    # long key rows, as timed (referee ch5f): one head, N_q = 256, N_k = 16384 (dry run: 128), TF32 and 3xTF32 against
    # float64 within the derived bound, and SDPA float32 (CUTLASS's 3xTF32 kernel) against the same float64 reference
    Nk = 128 if run.dry else 16384
    q, k, v = (torch.randn(1, 1, n, 64, generator=g) for n in (256, Nk, Nk))
    o2, lse2 = attention_reference(q.double(), k.double(), v.double(), return_lse=True)
    e = lambda a, b: float((a.detach().cpu().double() - b).abs().max())
    long_ = {'Nq': 256, 'Nk': Nk}
    for prec in TF32:
        o, lse = flash_attention(q.to(dev), k.to(dev), v.to(dev), return_lse=True, backend='cuda', fp32_precision=prec)
        bo, bl = A._tf32_bounds(q, k, v, 1 / 8, prec)
        record(f'fwd {prec} fwd BH=1 Nq=256 Nk={Nk}: O vs float64 (derived bound)', e(o, o2), bo + 1e-6, bound=bo)
        record(f'fwd {prec} fwd BH=1 Nq=256 Nk={Nk}: L vs float64 (derived bound)', e(lse, lse2), bl + 1e-6, bound=bl)
        long_[f'{prec}_o_err'], long_[f'{prec}_lse_err'] = e(o, o2), e(lse, lse2)
    if not run.dry:
        long_['sdpa_float32_o_err'] = e(torch.nn.functional.scaled_dot_product_attention(q.to(dev), k.to(dev), v.to(dev)), o2)
        long_['ieee_o_err'] = e(flash_attention(q.to(dev), k.to(dev), v.to(dev), backend='cuda'), o2)
    out['long_keys'] = long_
    print('tc long keys:', long_, flush=True)
    run.save()


def _host_timed(run: Run, row: dict, name: str, fn, reps_key: bool = False):
    "row[name] = the median event time of fn, row['host_s'][name] = the host's time per call (Run.time)."
    r = run.time(fn)
    row[name] = r['median_s']
    row.setdefault('host_s', {})[name] = r['host_s']
    if reps_key: row[name[:-2] + '_reps'] = r['reps']


def _tf32_timings(run: Run, row: dict, q, k, v):
    """Into `row`: flash_attention(fp32_precision=p) for p in TF32 and each of its variants (`{p}_{kind}_s`), the same
    with validate_inputs=False (`{p}_{kind}_unchecked_s`: no max|q|, max|k|, max|v| read back, so no device→host sync),
    and the bare kernel on (BH, N, 64) tensors (`{p}_{kind}_kernel_s`: no input checks, no reshapes); checked −
    unchecked is the sync's cost, unchecked − kernel the rest of the host's share. row['host_s']: host time per call."""
    q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]).contiguous() for t in (q, k, v))
    for prec in TF32:
        for kind in _kinds(prec):
            A._TF32_KIND = kind
            _host_timed(run, row, f'{prec}_{kind}_s', lambda: flash_attention(q, k, v, backend='cuda', fp32_precision=prec),
                        reps_key=True)
            _host_timed(run, row, f'{prec}_{kind}_unchecked_s',
                        lambda: flash_attention(q, k, v, backend='cuda', fp32_precision=prec, validate_inputs=False))
            if not run.dry:
                _host_timed(run, row, f'{prec}_{kind}_kernel_s', lambda: A._forward_mma(q3, k3, v3, 1 / 8, prec))
    A._TF32_KIND = 'fwd'


def _sync_debug(run: Run) -> dict:
    """flash_attention on a GPU under torch.cuda.set_sync_debug_mode('error') (torch raises on any synchronising
    torch call): the checked call (its one read-back) and validate_inputs=False, float32 TF32 and bfloat16, after a
    warm-up call outside the mode (the first-call check synchronises once per device and dtype). Numba's own calls are
    not seen by torch's mode."""
    if run.dry: return {'note': 'dry run: no CUDA streams to watch'}
    out = {}
    for dname, dt, prec in (('float32 tf32', torch.float32, 'tf32'), ('bfloat16', torch.bfloat16, 'ieee')):
        q = torch.randn(1, 8, 1024, 64, generator=torch.Generator().manual_seed(5)).to(run.device, dt)
        for val in (True, False):
            f = lambda: flash_attention(q, q, q, backend='cuda', fp32_precision=prec, validate_inputs=val)
            f(); torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode('error')
            try: f(); res = 'no synchronising torch call'
            except RuntimeError as e: res = f'synchronises: {str(e)[:200]}'
            finally: torch.cuda.set_sync_debug_mode(0)
            out[f"{dname} {'checked' if val else 'unchecked'}"] = res
    print('tc sync debug:', out, flush=True)
    return out


def _launch_overhead(run: Run) -> dict:
    """Numba's host cost per launch, measured on an empty kernel with the TF32 forward's argument kinds (q, k, v, o
    (8, 1024, 64) float32, m, l (8, 1024), a float32 scalar), grid (1, 1) × 32 threads (the GPU's time is a few µs, so
    back-to-back calls measure the host): `launch_cuda_s` through A._launch_cuda (torch tensors → cuda.as_cuda_array
    and cuda.external_stream per call, the dispatcher types 7 arguments: what every kernel call pays now);
    `premade_s` the dispatcher with device arrays and stream made once; `compiled_launch_s` the compiled kernel's
    launch() with them (no dispatcher typing); `torch_op_s` one small torch op for comparison. Each: event median and
    host time per call (`host_s`)."""
    from numba import cuda
    @cuda.jit
    def empty(q, k, v, o, m, l, s):
        pass
    ts = [torch.zeros(8, 1024, 64, device=run.device) for _ in range(4)] + [torch.zeros(8, 1024, device=run.device)
                                                                          for _ in range(2)]
    s = np.float32(0.125)
    row = {}
    _host_timed(run, row, 'launch_cuda_s', lambda: A._launch_cuda(empty, (1, 1), 32, *ts, s))
    if not run.dry:
        try:
            arrs = [cuda.as_cuda_array(t, sync=False) for t in ts]
            stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)
            _host_timed(run, row, 'premade_s', lambda: empty[(1, 1), 32, stream](*arrs, s))
            ovl = next(iter(empty.overloads.values()))
            _host_timed(run, row, 'compiled_launch_s', lambda: ovl.launch([*arrs, s], (1, 1, 1), (32, 1, 1), stream, 0))
        except Exception as e:              # noqa: BLE001 - a numba-cuda API difference must not lose the run
            row['error'] = repr(e)[:300]
        small = ts[-1][:1]
        _host_timed(run, row, 'torch_op_s', lambda: small.add_(0.0))
    print('tc launch overhead:', row, flush=True)
    return row


def tensor_cores(run: Run) -> dict:
    """The tensor-core kernels on this GPU: the first-call check under the default switch, GEMM and attention forward
    (then the backward from its statistics: on tensor cores at D = 64) against float64 and against the NumPy emulator, timings against the
    tiled kernels and SDPA (bfloat16 and float16 forward, bfloat16 fwd+bwd, float32 forward: tiled only), and the
    kernels' resources. In the dry run the emulator stands in for the kernels (shapes shrunk): it tests the plumbing."""
    import warnings
    out = {'checks': {}, 'rows': [], 'failures': []}
    saved, tf32_kind = (A._forward_mma, A._mma_applies, A._backward_mma), A._TF32_KIND
    if run.dry:
        A._forward_mma, A._backward_mma = _emulated_forward_mma, _emulated_backward_mma
        A._mma_applies = lambda q, mask, precision='ieee': (mask.kind in ('full', 'causal')
                                                             and A._mma_width(q, precision) is not None)
        out['note'] = 'dry run: the NumPy emulator stands in for the tensor-core kernels'
    else:
        out['capability'] = list(torch.cuda.get_device_capability())
        if tuple(out['capability']) < (8, 0):
            out['note'] = 'compute capability < 8.0: no mma.sync; the tiled kernels run'; return out
    dev = run.device
    def record(name, err, tol, **extra):
        ok = bool(np.isfinite(err) and err <= tol)
        out['checks'][name] = {'max_err': float(err), 'tol': float(tol), 'ok': ok, **extra}
        print(f'tc {name:52s} max err {err:.3e}  tol {tol:.2e}  {"ok" if ok else "FAIL"}', flush=True)
        if not ok: out['failures'].append(name)
    # 1. the first-call check, as a user meets it (default switch 'auto')
    A._TENSOR_CORES, A._MMA_STATUS, A._MMA_BWD_STATUS = 'auto', {}, {}
    g = torch.Generator().manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for dt in TC_DTYPES.values():
            q = torch.randn(1, 2, 64, 64, generator=g).to(dev, dt)
            flash_attention(q, q, q, backend='cuda')
        for prec in TF32:                          # (its own generator: the draws after it stay as they were)
            q = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(1)).to(dev)
            flash_attention(q, q, q, backend='cuda', fp32_precision=prec)
        gv = torch.Generator().manual_seed(2)      # the causal and D = 128 kernels (bfloat16), each checked on first use
        for dt in list(TC_DTYPES.values())[:1 if run.dry else None]:
            for D, causal in TC_VARIANTS[1:]:
                q, k = (torch.randn(1, 2, n, D, generator=gv).to(dev, dt) for n in (64, 80))
                flash_attention(q, k, k, backend='cuda', causal=causal)
        for prec in TF32:                          # the TF32 causal kernels
            q = torch.randn(1, 2, 64, 64, generator=gv).to(dev)
            flash_attention(q, q, q, backend='cuda', fp32_precision=prec, causal=True)
        for dt in list(TC_DTYPES.values())[:1 if run.dry else None]:   # the backward's check (the dry run: bfloat16)
            for causal in (False, True):
                q = torch.randn(1, 2, 64, 64, generator=gv).to(dev, dt).requires_grad_()
                flash_attention(q, q, q, backend='cuda', causal=causal).float().sum().backward()
    name = lambda d, t, w, c: (f"{d} {t if isinstance(t, str) else str(t)[6:]}" + (f' D={w}' if w != A._MMA_D else '')
                               + (' causal' if c else ''))
    out['first_call_check'] = {name(*key): s for key, s in A._MMA_STATUS.items()}
    out['first_call_check_backward'] = {name(d, t, A._MMA_D, c): s for (d, t, c), s in A._MMA_BWD_STATUS.items()}
    out['first_call_warnings'] = [str(w.message)[:500] for w in caught if 'tensor-core' in str(w.message)]
    print('tc first-call check:', out['first_call_check'], out['first_call_check_backward'], out['first_call_warnings'],
          flush=True)
    A._TENSOR_CORES = 'always'                     # from here on: the tensor-core forward wherever it applies
    try:
        # 2. GEMM: the hardware's fragment layout against float64 and the emulator
        for dname, dt in [*TC_DTYPES.items(), ('tf32', torch.float32), ('3xtf32', torch.float32)]:
            for M, K, N in ([(33, 17, 9)] if run.dry else [(33, 17, 9), (1000, 520, 300)]):
                X, Y = (torch.randn(*s, generator=g).to(dt) for s in ((M, K), (K, N)))
                C = _gemm_mma(run, X.to(dev), Y.to(dev), dname).cpu().double()
                exact = X.double() @ Y.double()
                tol = {'bfloat16': 1e-5, 'float16': 1e-5, '3xtf32': 2e-5, 'tf32': 5e-3}[dname] * K ** 0.5
                record(f'gemm {dname} {M}x{K}x{N} vs float64', float((C - exact).abs().max()), tol)
            X, Y = (torch.randn(*s, generator=g).to(dt) for s in ((40, 56), (56, 20)))
            emu = A._emulate_gemm(_bits16(X) if dname in TC_DTYPES else X.numpy(),
                                  _bits16(Y) if dname in TC_DTYPES else Y.numpy(), dname)
            record(f'gemm {dname} 40x56x20 vs emulator', float(np.abs(_gemm_mma(run, X.to(dev), Y.to(dev), dname)
                                                                         .cpu().numpy() - emu).max()), 5e-5)
        out['accumulation'] = _accumulation(run)
        # 3. attention: O and L against float64, gradients (the backward from the tensor-core statistics), emulator
        for dname, dt in TC_DTYPES.items():
            for BH, Nq, Nk in (TC_DRY_CHECKS if run.dry else TC_CHECKS):
                q, k, v, do = (torch.randn(1, BH, n, 64, generator=g).to(dt) for n in (Nq, Nk, Nk, Nq))
                qc, kc, vc = (t.detach().clone().to(dev).requires_grad_() for t in (q, k, v))
                o, lse = flash_attention(qc, kc, vc, return_lse=True, backend='cuda')
                (o.float() * do.to(dev).float()).sum().backward()
                q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
                o2, lse2 = attention_reference(q2, k2, v2, return_lse=True)
                (o2 * do.double()).sum().backward()
                e = lambda a, b: float((a.detach().cpu().double() - b.detach()).abs().max())
                tag = f'fwd {dname} BH={BH} Nq={Nq} Nk={Nk}'
                u = A._MMA_U[dt]          # P rounded to 16 bits (the derived bound) + O returned in q's dtype
                record(f'{tag}: O vs float64', e(o, o2), A._mma_o_bound(dt, float(v.abs().max()), Nk)
                       + u * float(o2.detach().abs().max()))
                record(f'{tag}: L vs float64', e(lse, lse2), 1e-4)
                for n, a, b in (('dq', qc, q2), ('dk', kc, k2), ('dv', vc, v2)) if Nk > 1 else ():   # N_k = 1: dq = dk = 0
                    rel = e(a.grad, b.grad) / max(float(b.grad.abs().max()), 1e-30)
                    record(f'{tag}: {n} vs float64 (relative)', rel, 4 * u)   # P, O, the gradients in 16 bits
                if not run.dry and Nq * Nk <= 80 * 100:
                    oe, me, le = A._emulate_flash_fwd(*(_bits16(t[0]) for t in (q, k, v)), 1 / 8, dname)
                    o_raw, ml = A._forward_mma(*(t[0].to(dev).contiguous() for t in (q, k, v)), 1 / 8)
                    record(f'{tag}: O vs emulator', float(np.abs(o_raw.cpu().numpy() - oe).max()), 2e-3)
                    record(f'{tag}: m, log2 l vs emulator', float(np.abs(ml.cpu().numpy() - np.stack([me, le])).max()), 1e-4)
                run.save()
        _variant_checks(run, g, record)
        _tf32_checks(run, g, record, out)
        out['sync_debug'] = _sync_debug(run); out['launch_overhead'] = _launch_overhead(run); run.save()
        # 4. timings: forward (and bfloat16 fwd+bwd) of the tensor-core path, the tiled kernels and SDPA, same dtype
        B, H = (1, 1) if run.dry else (1, 8)
        Ns = [64] if run.dry else TC_NS
        cases = [(N, 'float32', 'forward', 64, False) for N in Ns] + [          # float32 (TF32) first: the budget may stop
            (N, dn, p, 64, False) for N in Ns for dn, p in (('bfloat16', 'forward'), ('float16', 'forward'),
                                                            ('bfloat16', 'fwd+bwd'))]
        cases += [(N, 'bfloat16', p, D, c) for D, c, p in TC_VARIANT_ROWS for N in Ns]   # causal, D = 128: last
        for N, dname, passes, D, causal in cases:
            cfg = {'N': N, 'D': D, 'dtype': dname, 'pass': passes, 'B': B, 'H': H, 'causal': causal}
            if run.left() <= 0:
                out['rows'].append({**cfg, 'skipped': 'time budget spent'}); continue
            dt = {**TC_DTYPES, 'float32': torch.float32}[dname]
            q, k, v, do = (torch.randn(B, H, N, D, generator=g).to(dev, dt) for _ in range(4))
            if passes == 'fwd+bwd':
                for t in (q, k, v): t.requires_grad_()
            make = lambda f: _step(f, passes, q, k, v, do)
            row = dict(cfg)
            if dname == 'float32': _tf32_timings(run, row, q, k, v)        # TF32 / 3xTF32, both variants
            for name, mode in (('tensor_cores_s', 'always'), ('tiled_s', 'never')):
                if name == 'tensor_cores_s' and dname == 'float32': continue      # float32: the TF32 keys above
                A._TENSOR_CORES = mode
                _host_timed(run, row, name, make(lambda a, b, c: flash_attention(a, b, c, backend='cuda', causal=causal)),
                            reps_key=True)
            A._TENSOR_CORES = 'always'
            if dname == 'bfloat16' and passes == 'forward' and (D, causal) == (64, False):   # the sync's share, the bare kernel
                _host_timed(run, row, 'tensor_cores_unchecked_s',
                            lambda: flash_attention(q, k, v, backend='cuda', validate_inputs=False))
                if not run.dry:
                    q3, k3, v3 = (t.reshape(-1, N, 64).contiguous() for t in (q, k, v))
                    _host_timed(run, row, 'tensor_cores_kernel_s', lambda: A._forward_mma(q3, k3, v3, 1 / 8))
            r = run.time(make(lambda a, b, c: sdpa(a, b, c, is_causal=causal)))     # N_q = N_k: the same mask
            row.update(sdpa_s=r['median_s'], sdpa_reps=r['reps'])
            if dname == 'float32':              # SDPA with TF32 allowed for matmuls (torch's opt-in), then restored
                row['sdpa_allow_tf32_s'] = _with_allow_tf32(lambda: run.time(make(lambda a, b, c: sdpa(a, b, c))))['median_s']
            timed = [n for n in row if n.endswith('_s') and n != 'sdpa_s' and isinstance(row[n], float)]
            for name in timed:
                row[name[:-2] + '_ratio'] = row[name] / row['sdpa_s']
            flops = 4 * B * H * N * N * D * (1 if passes == 'forward' else 3.5) * (0.5 if causal else 1)
            row['tflops'] = {n: flops / row[n] / 1e12 for n in timed + ['sdpa_s']}
            out['rows'].append(row); run.result['tensor_cores'] = out; run.save()
            print('tc timing', {k_: (f'{x:.3g}' if isinstance(x, float) else x) for k_, x in row.items()}, flush=True)
    finally:
        A._TENSOR_CORES, A._TF32_KIND = 'auto', tf32_kind
        A._forward_mma, A._mma_applies, A._backward_mma = saved
    # 5. resources of the compiled tensor-core kernels
    if not run.dry:
        for (kind, dname), kern in A._MMA_KERNELS.items():
            for sig in list(kern.overloads):
                out.setdefault('kernels', {})[f'{kind} {dname}'] = _resources(kern, sig)
    return out


def kernel_resources(run: Run) -> dict:
    "Registers, local memory and shared memory per compiled kernel (numba-cuda's report of the compiled cubin)."
    if run.dry: return {'note': 'the simulator compiles nothing: see tests/test_attention_cudasim.py (ptxas)'}
    out = {}
    kernels = [(name, getattr(A, name)) for name in ('_fwd_cuda', '_bwd_dkdv_cuda', '_bwd_dq_cuda')]
    kernels += [(f'_flash_fwd_tiled{key}', kern) for key, kern in A._TILED.items()]       # key: (D, causal, shuffle, dtype)
    kernels += [(f'_flash_bwd_tiled{key}', kern) for key, kern in A._TILED_BWD.items()]
    kernels += [(f'_na_fwd_tiled{key}', kern) for key, kern in A._NA_TILED.items()]      # key: (D, shuffle, dtype)
    kernels += [(f'_na_bwd_tiled{key}', kern) for key, kern in A._NA_TILED_BWD.items()]  # key: (D, keys, dtype)
    for name, kern in kernels:
        for sig in list(kern.overloads):
            out[f'{name}{sig}'] = _resources(kern, sig)
    return out


def _resources(kern, sig) -> dict:
    "Registers, local and shared memory per thread/block of one compiled overload (or the error, not losing the run)."
    try:
        k = kern.overloads[sig]         # the compiled kernel (get_regs_per_thread(sig) wants a Signature, not a tuple)
        return {'registers': k.regs_per_thread, 'local_bytes': k.local_mem_per_thread,
                'shared_bytes': k.shared_mem_per_block}
    except Exception as e:              # noqa: BLE001 - report, do not lose the run
        return {'error': repr(e)[:200]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dry', action='store_true', help='under the CUDA simulator on tiny shapes (CPU only)')
    ap.add_argument('--quick', action='store_true', help='N in {1024, 4096} only')
    ap.add_argument('--budget-s', type=float, default=DEFAULT_BUDGET_S,
                    help='stop starting new timings after this many seconds (default 330; 75 with --only)')
    ap.add_argument('--out', default=None)
    ap.add_argument('--only', choices=['tensor_cores'], default=None,
                    help='run section 5 alone and write it into the JSON of --base (everything else kept)')
    ap.add_argument('--base', default=None, help='with --only: the JSON of an earlier full run (default: '
                    'benchmarks/results/attention_gpu.json); it is read, never written unless --out names it')
    args = ap.parse_args(argv)
    if args.dry and os.environ.get('NUMBA_ENABLE_CUDASIM') != '1':
        sys.exit('--dry needs NUMBA_ENABLE_CUDASIM=1 in the environment before Python starts (gpu_run.sh --dry sets it)')
    if not args.dry and not torch.cuda.is_available():
        sys.exit('no CUDA GPU visible to torch: run on a GPU machine, or use --dry (simulator) to check the script')
    out = args.out or ('/tmp/attention_gpu_dry.json' if args.dry
                       else str(Path(__file__).resolve().parent / 'results' / 'attention_gpu.json'))
    if args.only:
        return only_tensor_cores(args, out)
    run = Run(args.dry, out, args.budget_s)
    run.result['machine'] = machine_info()
    run.result['versions'] = versions(run); run.save()
    run.result['sdpa_backends'] = sdpa_backends(run); run.save()
    print('versions', run.result['versions'], '\nsdpa', run.result['sdpa_backends'], flush=True)
    try:
        run.result['check'] = check(run)
    except Exception as e:                      # noqa: BLE001 - keep the error, still measure the speed
        import traceback
        run.result['check'], run.result['check_error'] = {}, traceback.format_exc()[-3000:]
        print('correctness check failed:', run.result['check_error'], flush=True)
    run.save()
    try:
        run.result['tensor_cores'] = tensor_cores(run)
    except Exception as e:                      # noqa: BLE001 - keep the error, still measure the rest
        import traceback
        run.result['tensor_cores_error'] = traceback.format_exc()[-3000:]
        print('tensor-core section failed:', run.result['tensor_cores_error'], flush=True)
    run.save()
    timings(run, args.quick)
    neighborhood(run); run.save()
    run.result['kernels'] = kernel_resources(run); run.save()
    print(f'wrote {out} in {run.result["elapsed_s"]} s', flush=True)


def only_tensor_cores(args, out: str):
    """`--only tensor_cores`: section 5 alone, written into a copy of an earlier full run's JSON (--base) at `out`.
    Timings stop starting after --budget-s (default here 75 s: float32 rows first); rows not re-measured keep the earlier values, marked
    `from_run` with the earlier run's date; the earlier section's `fixed` record is carried over."""
    base = Path(args.base or Path(__file__).resolve().parent / 'results' / 'attention_gpu.json')
    if not base.exists(): sys.exit(f'--only tensor_cores needs the JSON of an earlier full run: {base} not found')
    earlier = json.loads(base.read_text())
    budget = args.budget_s if args.budget_s != DEFAULT_BUDGET_S else 75.0
    run = Run(args.dry, out, budget)
    run.result, run.stamp = earlier, False
    old = earlier.get('tensor_cores', {})
    when = earlier.get('machine', {}).get('date')
    info = {'date': machine_info().get('date'), 'versions': versions(run), 'budget_s': budget, 'base': str(base),
            'dry_run_on_simulator': args.dry}
    try:
        tc = tensor_cores(run)
    except Exception:                            # noqa: BLE001 - keep the error and the earlier section
        import traceback
        run.result['tensor_cores_error'] = traceback.format_exc()[-3000:]
        print('tensor-core section failed:', run.result['tensor_cores_error'], flush=True)
        run.save(); return
    key = lambda r: (r['N'], r['dtype'], r['pass'], r.get('D', 64), r.get('causal', False))
    done = {key(r) for r in tc['rows'] if 'skipped' not in r}
    tc['rows'] = [r for r in tc['rows'] if 'skipped' not in r] + [
        {**r, 'from_run': when} for r in old.get('rows', []) if key(r) not in done and 'skipped' not in r]
    if 'fixed' in old:                           # the record of a fixed failure, with the value measured before the fix
        tc['fixed'] = {n: {'before': old.get('checks', {}).get(n), **f} for n, f in old['fixed'].items()}
    info['elapsed_s'] = round(time.perf_counter() - run.t0, 1)
    tc['run'] = info
    run.result['tensor_cores'] = tc
    run.result.pop('tensor_cores_error', None)
    run.save()
    print(f'wrote {out} (section tensor_cores of {base}) in {info["elapsed_s"]} s', flush=True)


if __name__ == '__main__':
    main()
