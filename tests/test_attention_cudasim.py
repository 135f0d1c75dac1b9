"""The CUDA kernels of chapter 5 (geobook.attention) without a GPU.

1. Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, which must be set before numba is imported, so the kernels run
   in a subprocess): output, log-sum-exp and dq/dk/dv of `flash_attention(backend='cuda')` and
   `neighborhood_attention(backend='cuda')` against the float64 dense references, on small shapes that are not
   multiples of the tiles, causal and not, with fully masked rows (Nq > Nk, causal). The simulator runs ~0.5 M
   multiply-adds/s, so the shapes keep B·H·N²·D well under 4 M.
2. The simulator is lenient (float64 math, no limits), so the same kernels are compiled for a real target
   (compute capability 9.0) with numba-cuda's `compile_ptx`, and the PTX must hold no float64 instruction. This needs
   NVIDIA's NVVM wheels: `pip install "numba-cuda[cu13]"` (pulls nvidia-nvvm, nvidia-cuda-nvrtc, nvidia-nvjitlink,
   nvidia-cuda-runtime, nvidia-cuda-cccl, cuda-toolkit); without them the test is skipped and says so.
3. That PTX is assembled for sm_90 by ptxas (the nvidia-cuda-nvcc wheel, also in the `ptx` extra), whose report must
   show no register spills and static shared memory within the 48 KiB a block may declare statically.
4. The tiled FlashAttention-2 kernels (`_flash_fwd_tiled`, `_flash_bwd_tiled` for dQ and for dK, dV; dispatched for
   full and causal masks, so the cases of 1. run them): under the simulator the forward runs with the shared-memory row
   reduction (the simulator has no warp shuffles), which is also tested on its own; their GPU builds (warp shuffles,
   launch bounds) are compiled for sm_90 at D ∈ {64, 128}, causal and not, and ptxas must report a 0-byte stack frame,
   no spills, at most 128 registers and the shared memory `_tiled_smem` / `_bwd_smem` predict; the same for sm_80.

Tolerances: the kernels accumulate in float32 against a float64 reference; for N ≤ 100, D ≤ 32 and unit-variance
inputs float32 rounding gives errors ~1e-6, so we allow 2e-5 on outputs/lse and 1e-4 on gradients (as in the chapter).
"""
import json, os, re, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

SIM_SCRIPT = textwrap.dedent(r'''
    import json, os, sys, time
    assert os.environ.get('NUMBA_ENABLE_CUDASIM') == '1'
    import numba, torch
    assert numba.core.config.ENABLE_CUDASIM
    from geobook.attention import (flash_attention, attention_reference, neighborhood_attention,
                                   neighborhood_attention_reference)

    def run(fn, ref, sq, sk, seed, **kw):
        g = torch.Generator().manual_seed(seed)
        q = torch.randn(*sq, generator=g); k = torch.randn(*sk, generator=g); v = torch.randn(*sk, generator=g)
        do = torch.randn(*sq, generator=g); dl = torch.randn(*sq[:-1], generator=g)
        for t in (q, k, v): t.requires_grad_()
        o, lse = fn(q, k, v, return_lse=True, backend='cuda', **kw)
        fin = torch.isfinite(lse)
        ((o * do).sum() + (torch.where(fin, lse, 0.) * dl).sum()).backward()
        q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
        o2, lse2 = ref(q2, k2, v2, return_lse=True, **kw)
        fin2 = torch.isfinite(lse2)
        ((o2 * do.double()).sum() + (torch.where(fin2, lse2, 0.) * dl.double()).sum()).backward()
        e = lambda a, b: float((a.double() - b).abs().max())
        return {'o': e(o, o2), 'lse': e(torch.where(fin, lse, 0.), torch.where(fin2, lse2, 0.)),
                'dq': e(q.grad, q2.grad), 'dk': e(k.grad, k2.grad), 'dv': e(v.grad, v2.grad),
                'masked_rows': int((~fin).sum()), 'masked_rows_ref': int((~fin2).sum()),
                'finite': bool(torch.isfinite(o).all() and torch.isfinite(q.grad).all()
                               and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all())}

    cases = {
        'full_ragged':       (flash_attention, attention_reference, (1, 2, 70, 16), (1, 2, 70, 16), {}),
        'causal_ragged':     (flash_attention, attention_reference, (1, 2, 70, 16), (1, 2, 70, 16), {'causal': True}),
        'causal_nq_gt_nk':   (flash_attention, attention_reference, (1, 1, 90, 8), (1, 1, 45, 8), {'causal': True}),
        'full_nq_lt_nk_d32': (flash_attention, attention_reference, (1, 1, 20, 32), (1, 1, 77, 32), {}),
        'causal_nq_lt_nk':   (flash_attention, attention_reference, (1, 1, 20, 8), (1, 1, 77, 8), {'causal': True}),
        'causal_d64':        (flash_attention, attention_reference, (1, 1, 40, 64), (1, 1, 40, 64), {'causal': True}),
        'full_d12_padded':   (flash_attention, attention_reference, (1, 2, 33, 12), (1, 2, 50, 12), {}),
        'na1d_dilated':      (neighborhood_attention, neighborhood_attention_reference, (1, 1, 100, 8), (1, 1, 100, 8),
                              {'kernel_size': 7, 'dilation': 3}),
        'na1d_causal':       (neighborhood_attention, neighborhood_attention_reference, (1, 1, 80, 8), (1, 1, 80, 8),
                              {'kernel_size': 5, 'dilation': 2, 'causal': True}),
        'na2d':              (neighborhood_attention, neighborhood_attention_reference, (1, 1, 9, 8, 8),
                              (1, 1, 9, 8, 8), {'kernel_size': (3, 5), 'dilation': (2, 1)}),
    }
    out = {}
    for i, (name, (fn, ref, sq, sk, kw)) in enumerate(cases.items()):
        t0 = time.perf_counter()
        out[name] = run(fn, ref, sq, sk, seed=i, **kw)
        out[name]['seconds'] = time.perf_counter() - t0
    import geobook.attention as A
    out['tiled_keys'] = sorted(map(list, A._TILED))
    out['tiled_bwd_keys'] = sorted(map(list, A._TILED_BWD))
    # the simulator's row reductions on their own: 2 rows of values per thread, groups of _TX consecutive threads
    from numba import cuda, float32
    import numpy as np
    rmax, rsum = cuda.jit(device=True)(A._rowmax_smem_py), cuda.jit(device=True)(A._rowsum_smem_py)
    @cuda.jit
    def red_kernel(x, mx, sm):
        t = cuda.threadIdx.x
        red = cuda.shared.array((2, A._NT), float32)
        for r in range(2):
            mx[r, t] = rmax(x[r, t], red, r, t)
            sm[r, t] = rsum(x[r, t], red, r, t)
    x = np.random.default_rng(0).normal(size=(2, A._NT)).astype(np.float32)
    mx, sm = np.zeros_like(x), np.zeros_like(x)
    red_kernel[1, A._NT](x, mx, sm)
    g = x.reshape(2, A._NT // A._TX, A._TX)
    out['reduce'] = {'max_err': float(np.abs(mx - np.repeat(g.max(-1), A._TX, axis=1)).max()),
                     'sum_err': float(np.abs(sm - np.repeat(g.astype(np.float64).sum(-1), A._TX, axis=1)).max())}
    # the tiled and the simple forward agree (both float32 under the simulator)
    gen = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (50, 70, 70))
    A._TILED_FORWARD = False
    o_simple = flash_attention(q, k, v, causal=True, backend='cuda')
    A._TILED_FORWARD = True
    o_tiled = flash_attention(q, k, v, causal=True, backend='cuda')
    out['tiled_vs_simple'] = float((o_tiled - o_simple).abs().max())
    # one compiled tiled kernel per input dtype: float16 and bfloat16 inputs are read as they are (bfloat16 as int16
    # bits) by kernels compiled for them, and give the bits the float32 kernel gives on the same (exactly widened) values
    before_f, before_b = set(A._TILED), set(A._TILED_BWD)
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, n, 12, generator=gen) for n in (20, 27, 27))
    do = torch.randn(2, 20, 12, generator=gen)
    same = {}
    for dt in (torch.float16, torch.bfloat16):
        for causal in (False, True):
            m = A._Mask('causal' if causal else 'full', off=7)
            h = [t.to(dt).contiguous() for t in (q, k, v)]
            w = [t.float() for t in h]
            oh, lh = A._forward_impl(*h, 0.3, m, 'cuda')
            of, lf = A._forward_impl(*w, 0.3, m, 'cuda')
            gh = A._backward_impl(*h, of, lf, do, None, 0.3, m, 'cuda')
            gf = A._backward_impl(*w, of, lf, do, None, 0.3, m, 'cuda')
            same[f'{dt}_{causal}'] = [oh.dtype == torch.float32, torch.equal(oh, of), torch.equal(lh, lf),
                                      *(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(gh, gf))]
    out['dtype_bitwise'] = same
    out['dtype_new_fwd_keys'] = sorted(map(list, set(A._TILED) - before_f))
    out['dtype_new_bwd_keys'] = sorted(map(list, set(A._TILED_BWD) - before_b))
    out['dtype_distinct_objects'] = len({id(A._TILED[(16, True, False, d)]) for d in ('float32', 'float16', 'bfloat16')})
    # end to end: half inputs give half outputs and gradients, within their rounding of the float64 answer
    e2e = {}
    for dt in (torch.float16, torch.bfloat16):
        qq, kk, vv = (t[None].to(dt).requires_grad_() for t in (q, k, v))
        o = flash_attention(qq, kk, vv, causal=True, backend='cuda')
        (o.float() * do[None]).sum().backward()
        q2, k2, v2 = (t.detach().double().requires_grad_() for t in (qq, kk, vv))
        o2 = attention_reference(q2, k2, v2, causal=True)
        (o2 * do[None].double()).sum().backward()
        e2e[str(dt)] = {'dtypes': [str(t.dtype) for t in (o, qq.grad, kk.grad, vv.grad)],
                        'o_rel': float(((o.double() - o2).abs() / o2.abs().clamp_min(1)).max()),
                        'eps': torch.finfo(dt).eps,
                        'grad_rel': max(float(((a.grad.double() - b.grad).abs() / b.grad.abs().clamp_min(1)).max())
                                        for a, b in ((qq, q2), (kk, k2), (vv, v2)))}
    out['dtype_e2e'] = e2e
    # the bfloat16 decoder on every finite bit pattern
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    vals = bits.view(torch.bfloat16).float()
    fin = torch.isfinite(vals)
    dec = torch.tensor([A._load_bf16_py(b) for b in bits[fin].numpy()], dtype=torch.float32)
    out['bf16_decode'] = {'n': int(fin.sum()), 'exact': bool(torch.equal(dec, vals[fin])),
                          'signs': bool(torch.equal(torch.signbit(dec), torch.signbit(vals[fin])))}
    # validate_inputs=False: no tensor → host read (.tolist, .item, bool, float, int) in the call, the same result
    gen = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (40, 50, 50))
    calls = [('flash', lambda val: flash_attention(q, k, v, backend='cuda', validate_inputs=val)),
             ('flash_causal', lambda val: flash_attention(q, k, v, causal=True, backend='cuda', validate_inputs=val)),
             ('na1d', lambda val: neighborhood_attention(k, k, v, 5, backend='cuda', validate_inputs=val))]
    names = ('tolist', 'item', '__bool__', '__float__', '__int__', '__index__')
    saved = {n: getattr(torch.Tensor, n) for n in names}
    def read_back(*a, **kw): raise RuntimeError('device→host read')
    unchecked = {}
    for name, call in calls:
        ref = call(True)
        res, outs = {}, {}
        for val in (True, False):
            for n in names: setattr(torch.Tensor, n, read_back)
            try: outs[val], res[val] = call(val), 'no read'
            except RuntimeError as e: res[val] = str(e)
            finally:
                for n, f in saved.items(): setattr(torch.Tensor, n, f)
        unchecked[name] = {'checked': res[True], 'unchecked': res[False],
                           'same': False in outs and bool(torch.equal(outs[False], ref))}
    qn = q.clone(); qn[0, 1, 7, 3] = float('nan')
    o, lse = flash_attention(qn, k, v, return_lse=True, backend='cuda', validate_inputs=False)
    unchecked['nan'] = {'head_nan': bool(o[0, 1].isnan().all() and lse[0, 1].isnan().all()),
                        'other_same': bool(torch.equal(o[0, 0], flash_attention(q, k, v, backend='cuda')[0, 0]))}
    out['unchecked'] = unchecked
    print('RESULT' + json.dumps(out))
''')

PTX_SCRIPT = textwrap.dedent(r'''
    import json, os, re
    from pathlib import Path
    from numba import float32, int32
    from numba.cuda import compile_ptx
    import numba.cuda.dispatcher as disp
    import geobook.attention as A
    # Device functions called from a kernel are compiled for the *current* device's compute capability, which does
    # not exist without a GPU: pretend it is 9.0 (the target of compile_ptx below).
    disp.get_current_device = lambda: type('FakeDevice', (), {'compute_capability': (9, 0)})()
    a3, a2, a1 = float32[:, :, ::1], float32[:, ::1], int32[::1]
    sigs = {'_fwd_cuda_py': (a3, a3, a3, a3, a2, a2, float32, a1, a1, a1),
            '_bwd_dkdv_cuda_py': (a3, a3, a3, a3, a2, a2, a2, a3, a3, float32, float32, a1, a1, a1),
            '_bwd_dq_cuda_py': (a3, a3, a3, a3, a2, a2, a2, a3, float32, float32, a1, a1, a1)}
    out = {}
    for D in (64, 128):
        for causal in (False, True):
            name = f'tiled_D{D}_{"causal" if causal else "full"}'
            ptx, _ = compile_ptx(A._flash_fwd_tiled_py(D, causal, True), (a3, a3, a3, a3, a2, a2, float32, int32),
                                 cc=(9, 0), launch_bounds=A._LAUNCH_BOUNDS)
            f64 = [l.strip() for l in ptx.splitlines() if re.search(r'\.f64\b', l)]
            out[name] = {'bytes': len(ptx), 'f64_lines': f64[:5], 'n_f64': len(f64), 'shfl': 'shfl.sync.bfly' in ptx,
                         'smem_expected': A._tiled_smem(*A._tiled_shape(D))}
            (Path(os.environ['GEOBOOK_PTX_DIR']) / f'{name}.ptx').write_text(ptx)
            for keys in (False, True):
                name = f'tiled_{"dkdv" if keys else "dq"}_D{D}_{"causal" if causal else "full"}'
                ptx, _ = compile_ptx(A._flash_bwd_tiled_py(D, causal, keys),
                                     (a3, a3, a3, a3, a2, a2, a2, a3, a3, float32, float32, int32),
                                     cc=(9, 0), launch_bounds=A._LAUNCH_BOUNDS)
                f64 = [l.strip() for l in ptx.splitlines() if re.search(r'\.f64\b', l)]
                out[name] = {'bytes': len(ptx), 'f64_lines': f64[:5], 'n_f64': len(f64),
                             'shfl': 'shfl.sync.bfly' in ptx, 'smem_expected': A._bwd_smem(*A._bwd_shape(D), keys)}
                (Path(os.environ['GEOBOOK_PTX_DIR']) / f'{name}.ptx').write_text(ptx)
    from numba import int16
    from numba.core.types import float16
    for dt, ty in (('float16', float16[:, :, ::1]), ('bfloat16', int16[:, :, ::1])):   # kernels that read half inputs
        for kind in ('fwd', 'dq', 'dkdv'):
            name = f'half_{kind}_D64_causal_{dt}'
            if kind == 'fwd':
                ptx, _ = compile_ptx(A._flash_fwd_tiled_py(64, True, True, dt), (ty, ty, ty, a3, a2, a2, float32, int32),
                                     cc=(9, 0), launch_bounds=A._LAUNCH_BOUNDS)
            else:
                ptx, _ = compile_ptx(A._flash_bwd_tiled_py(64, True, kind == 'dkdv', dt),
                                     (ty, ty, ty, a3, a2, a2, a2, a3, a3, float32, float32, int32),
                                     cc=(9, 0), launch_bounds=A._LAUNCH_BOUNDS)
            f64 = [l.strip() for l in ptx.splitlines() if re.search(r'\.f64\b', l)]
            out[name] = {'bytes': len(ptx), 'f64_lines': f64[:5], 'n_f64': len(f64), 'u16_loads': 'ld.global.u16' in ptx
                         or 'ld.global.nc.u16' in ptx}
            (Path(os.environ['GEOBOOK_PTX_DIR']) / f'{name}.ptx').write_text(ptx)
    # the same tiled kernels for sm_80 (A100): device functions compile for the current device, so pretend it is 8.0
    disp.get_current_device = lambda: type('FakeDevice', (), {'compute_capability': (8, 0)})()
    fsig, bsig = (a3, a3, a3, a3, a2, a2, float32, int32), (a3, a3, a3, a3, a2, a2, a2, a3, a3, float32, float32, int32)
    for D in (64, 128):
        for causal in (False, True):
            m = "causal" if causal else "full"
            for kind, fn, sig, smem in (('', A._flash_fwd_tiled_py(D, causal, True), fsig, A._tiled_smem(*A._tiled_shape(D))),
                                        ('dq_', A._flash_bwd_tiled_py(D, causal, False), bsig, A._bwd_smem(*A._bwd_shape(D), False)),
                                        ('dkdv_', A._flash_bwd_tiled_py(D, causal, True), bsig, A._bwd_smem(*A._bwd_shape(D), True))):
                name = f'sm80_tiled_{kind}D{D}_{m}'
                ptx, _ = compile_ptx(fn, sig, cc=(8, 0), launch_bounds=A._LAUNCH_BOUNDS)
                f64 = [l.strip() for l in ptx.splitlines() if re.search(r'\.f64\b', l)]
                out[name] = {'bytes': len(ptx), 'f64_lines': f64[:5], 'n_f64': len(f64), 'smem_expected': smem}
                (Path(os.environ['GEOBOOK_PTX_DIR']) / f'{name}.ptx').write_text(ptx)
    disp.get_current_device = lambda: type('FakeDevice', (), {'compute_capability': (9, 0)})()
    for name, sig in sigs.items():
        ptx, _ = compile_ptx(getattr(A, name), sig, cc=(9, 0))
        f64 = [l.strip() for l in ptx.splitlines() if re.search(r'\.f64\b', l)]
        out[name] = {'bytes': len(ptx), 'f64_lines': f64[:5], 'n_f64': len(f64)}
        (Path(os.environ['GEOBOOK_PTX_DIR']) / f'{name}.ptx').write_text(ptx)
    print('RESULT' + json.dumps(out))
''')


def _run(script, env_extra, timeout):
    env = {**os.environ, **env_extra, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    p = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=timeout,
                       cwd=ROOT)
    lines = [l for l in p.stdout.splitlines() if l.startswith('RESULT')]
    return p, (json.loads(lines[-1][6:]) if lines else None)


@pytest.fixture(scope='module')
def sim_results():
    p, res = _run(SIM_SCRIPT, {'NUMBA_ENABLE_CUDASIM': '1'}, timeout=600)
    assert res is not None, f'simulator run failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}'
    return res


CASES = ['full_ragged', 'causal_ragged', 'causal_nq_gt_nk', 'full_nq_lt_nk_d32', 'causal_nq_lt_nk', 'causal_d64',
         'full_d12_padded', 'na1d_dilated', 'na1d_causal', 'na2d']


def test_unchecked_call_reads_nothing_back(sim_results):
    """validate_inputs=False under the simulator (the tiled CUDA forward, and the neighborhood kernel): with every
    tensor → host read patched to raise, the checked call hits one (the read-back of _fit_float32: the test sees it)
    and the unchecked call none, and gives the same bits; NaN in q makes that batch·head NaN (O and L), the others
    unchanged."""
    u = sim_results['unchecked']
    for name in ('flash', 'flash_causal', 'na1d'):
        assert u[name]['checked'] == 'device→host read', u[name]
        assert u[name]['unchecked'] == 'no read' and u[name]['same'], u[name]
    assert u['nan'] == {'head_nan': True, 'other_same': True}


@pytest.mark.parametrize('case', CASES)
def test_cuda_kernels_match_reference_under_simulator(sim_results, case):
    r = sim_results[case]
    assert r['finite'], r
    assert r['masked_rows'] == r['masked_rows_ref'], r
    assert r['o'] < 2e-5 and r['lse'] < 2e-5, r
    assert max(r['dq'], r['dk'], r['dv']) < 1e-4, r


def test_fully_masked_rows_present(sim_results):
    "Nq=90 > Nk=45 causal: the first 45 queries see no key (lse = -inf, output 0, no NaN)."
    assert sim_results['causal_nq_gt_nk']['masked_rows'] == 45


def test_tiled_forward_was_dispatched(sim_results):
    """backend='cuda' full and causal forwards ran the tiled kernel: one compiled kernel per (D_p, causal, shuffle,
    dtype), with the shared-memory reduction (shuffle False) under the simulator; D = 12 was padded to D_p = 16."""
    keys = {tuple(k) for k in sim_results['tiled_keys']}
    dc = {(16, False), (16, True), (8, True), (32, False), (64, True)}           # (D_p, causal) of the flash cases
    assert {(d, c, False, 'float32') for d, c in dc} == keys
    assert {(d, c, r, 'float32') for d, c in dc for r in (False, True)} == {tuple(k) for k in sim_results['tiled_bwd_keys']}


def test_tiled_kernels_are_compiled_per_dtype(sim_results):
    """Issue 18 part 1: one compiled kernel per (head dim, mask mode, dtype). float16 and bfloat16 inputs (D = 12 → 16,
    N_q = 20, N_k = 27, full and causal) made new forward and backward kernels keyed by their dtype, distinct objects
    from the float32 one; they read the half inputs directly and give bit for bit the O, L, dQ, dK, dV (float32) of the
    float32 kernel on the same values widened to float32 (the widening is exact, and the arithmetic after the load is
    the same)."""
    new_f = {tuple(k) for k in sim_results['dtype_new_fwd_keys']}
    new_b = {tuple(k) for k in sim_results['dtype_new_bwd_keys']}
    assert new_f == {(16, c, False, d) for c in (False, True) for d in ('float16', 'bfloat16')}, new_f
    assert new_b == {(16, c, r, d) for c in (False, True) for r in (False, True) for d in ('float16', 'bfloat16')}, new_b
    assert sim_results['dtype_distinct_objects'] == 3
    for case, flags in sim_results['dtype_bitwise'].items():
        assert all(flags) and len(flags) == 6, (case, flags)


def test_half_inputs_end_to_end(sim_results):
    """flash_attention(backend='cuda') on float16/bfloat16 tensors returns O and gradients in that dtype, equal to the
    float64 answer on the same (rounded) inputs up to rounding the float32 result to the dtype: relative error
    ≤ ε (ε = 2⁻¹⁰ float16, 2⁻⁷ bfloat16; rounding to nearest gives ≤ ε/2, float32 accumulation adds ~1e-6)."""
    for dt, r in sim_results['dtype_e2e'].items():
        assert r['dtypes'] == [dt] * 4, r
        assert r['o_rel'] <= r['eps'] and r['grad_rel'] <= r['eps'], (dt, r)


def test_bfloat16_decoder_is_exact(sim_results):
    "The kernels' bfloat16 loader (int16 bits → float32) on all 65 280 finite bit patterns: exact, signed zeros included."
    r = sim_results['bf16_decode']
    assert r == {'n': 65280, 'exact': True, 'signs': True}, r


def test_shared_memory_row_reduction(sim_results):
    "The simulator's row max and row sum over groups of _TX threads equal numpy's (float32 sum of 8: error < 1e-6)."
    r = sim_results['reduce']
    assert r['max_err'] == 0 and r['sum_err'] < 1e-6, r


def test_tiled_agrees_with_simple_kernel(sim_results):
    "Tiled and simple forward, both float32, causal N_q = 50 < N_k = 70, D = 16: equal to float32 rounding."
    assert sim_results['tiled_vs_simple'] < 2e-6, sim_results['tiled_vs_simple']


def _nvvm_available():
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
        return True
    except Exception:
        return False


@pytest.fixture(scope='module')
def ptx(tmp_path_factory):
    "Compile the three CUDA kernels to PTX for cc 9.0; returns (per-kernel facts, folder holding <kernel>.ptx)."
    probe = subprocess.run([sys.executable, '-c', 'from numba.cuda.cudadrv import nvvm; nvvm.NVVM()'],
                           capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                if k != 'NUMBA_ENABLE_CUDASIM'})
    if probe.returncode != 0:
        pytest.skip('NVVM not found: compile_ptx needs NVIDIA\'s NVVM wheels, `pip install "numba-cuda[cu13]"` '
                    '(nvidia-nvvm, nvidia-cuda-nvrtc, nvidia-nvjitlink, nvidia-cuda-runtime)')
    folder = tmp_path_factory.mktemp('ptx')
    p, res = _run(PTX_SCRIPT, {'NUMBA_ENABLE_CUDASIM': '0', 'GEOBOOK_PTX_DIR': str(folder)}, timeout=600)
    assert res is not None, f'compile_ptx failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}'
    return res, folder


def test_ptx_has_no_float64(ptx):
    res, _ = ptx
    assert sum(n.startswith('tiled_') for n in res) == 12, sorted(res)
    assert sum(n.startswith('sm80_tiled_') for n in res) == 12, sorted(res)
    assert sum(n.startswith('half_') for n in res) == 6, sorted(res)
    for name, r in res.items():
        assert r['bytes'] > 1000, (name, r)
        assert r['n_f64'] == 0, f'{name} has float64 instructions: {r["f64_lines"]}'


def _find_ptxas():
    """The ptxas of NVIDIA's nvcc wheel (nvidia/cu13/bin or nvidia/cuda_nvcc/bin), which matches the NVVM that wrote the
    PTX; else one on PATH (an older toolkit there may reject a newer PTX .version, and the test then fails saying so)."""
    try:
        import nvidia
        for base in map(Path, nvidia.__path__):
            for cand in [*sorted(base.glob('cu*/bin/ptxas')), base / 'cuda_nvcc' / 'bin' / 'ptxas']:
                if cand.is_file(): return str(cand)
    except ImportError: pass
    return shutil.which('ptxas')


PTXAS_RE = dict(stack=r'(\d+) bytes stack frame', spill_st=r'(\d+) bytes spill stores', spill_ld=r'(\d+) bytes spill loads',
                regs=r'Used (\d+) registers', smem=r'(\d+) bytes smem')


def ptxas_facts(folder: Path, name: str, arch: str = 'sm_90') -> dict:
    """Assemble `folder/name.ptx` for `arch` with `ptxas -v` and return its report as numbers (stack, spill_st, spill_ld,
    regs, smem); skips the test when no ptxas is installed, fails when ptxas fails or reports something unexpected."""
    exe = _find_ptxas()
    if exe is None:
        pytest.skip('ptxas not found: `pip install "nvidia-cuda-nvcc>=13,<14"` (in the `ptx` extra) or put it on PATH')
    p = subprocess.run([exe, f'-arch={arch}', '-v', str(folder / f'{name}.ptx'), '-o', str(folder / f'{name}.cubin')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f'ptxas failed on {name}:\n{p.stderr[-3000:]}'
    facts = {k: int(m.group(1)) for k, rx in PTXAS_RE.items() if (m := re.search(rx, p.stderr + p.stdout))}
    print(name, arch, facts)
    return facts


@pytest.mark.parametrize('kernel', ['_fwd_cuda_py', '_bwd_dkdv_cuda_py', '_bwd_dq_cuda_py'])
def test_ptxas_no_spills_and_shared_memory_fits(ptx, kernel):
    """ptxas -v for sm_90: no spill stores or loads, at most 255 registers per thread, static shared memory at most
    48 KiB (the limit on a block's static __shared__ declarations on every architecture)."""
    _, folder = ptx
    facts = ptxas_facts(folder, kernel)
    assert facts['spill_st'] == 0 and facts['spill_ld'] == 0, f'{kernel} spills registers: {facts}'
    assert facts['regs'] <= 255, facts
    assert facts['smem'] <= 48 * 1024, f'{kernel} declares {facts["smem"]} bytes of static shared memory: {facts}'


TILED = [f'tiled_{k}D{D}_{m}' for k in ('', 'dq_', 'dkdv_') for D in (64, 128) for m in ('full', 'causal')]


@pytest.mark.parametrize('kernel', TILED)
def test_tiled_ptxas_registers_and_no_stack(ptx, kernel):
    """The tiled kernels' GPU builds for sm_90 (forward, dQ, dK dV; D ∈ {64, 128}, full and causal): the forward's row
    max by warp shuffles (`shfl.sync.bfly` in the PTX; the backward reduces no rows), a 0-byte stack frame, no spills,
    at most 128 registers (the launch bounds' cap 65536/(128·4): 4 blocks of 128 threads per SM, 16 of 64 warps) and
    exactly the shared memory `_tiled_smem` / `_bwd_smem` give."""
    res, folder = ptx
    forward = not kernel.startswith(('tiled_dq_', 'tiled_dkdv_'))
    assert res[kernel]['shfl'] == forward, f'{kernel}: warp shuffles in the forward only'
    facts = ptxas_facts(folder, kernel)
    assert 'stack' in facts, facts
    assert facts['stack'] == 0, f'{kernel} has a stack frame: {facts}'
    assert facts['spill_st'] == 0 and facts['spill_ld'] == 0, f'{kernel} spills registers: {facts}'
    assert facts['regs'] <= 128, facts
    assert facts['smem'] == res[kernel]['smem_expected'], facts


@pytest.mark.parametrize('kernel', TILED)
def test_tiled_ptxas_sm80(ptx, kernel):
    """The tiled kernels built for sm_80 (A100) as well: a 0-byte stack frame, no spills, at most 128 registers and the
    predicted shared memory (the referee found 8 bytes of spills in the causal D = 64 dK dV kernel there, before the
    backward stopped carrying L·log₂e and read m, log₂ ℓ instead)."""
    res, folder = ptx
    name = 'sm80_' + kernel
    facts = ptxas_facts(folder, name, 'sm_80')
    assert facts['stack'] == 0 and facts['spill_st'] == 0 and facts['spill_ld'] == 0, facts
    assert facts['regs'] <= 128 and facts['smem'] == res[name]['smem_expected'], facts


HALF = [f'half_{k}_D64_causal_{dt}' for k in ('fwd', 'dq', 'dkdv') for dt in ('float16', 'bfloat16')]


@pytest.mark.parametrize('kernel', HALF)
def test_half_input_kernels_ptxas(ptx, kernel):
    """The tiled kernels compiled for float16 and bfloat16 inputs (D = 64, causal, sm_90) load 16-bit words from global
    memory, have no float64 instruction, a 0-byte stack frame, no spills and at most 128 registers, like the float32 ones."""
    res, folder = ptx
    assert res[kernel]['u16_loads'] and res[kernel]['n_f64'] == 0, res[kernel]
    facts = ptxas_facts(folder, kernel)
    assert facts['stack'] == 0 and facts['spill_st'] == 0 and facts['spill_ld'] == 0, facts
    assert facts['regs'] <= 128, facts
