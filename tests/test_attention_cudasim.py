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
    sigs = {'_fwd_cuda_py': (a3, a3, a3, a3, a2, float32, a1, a1, a1),
            '_bwd_dkdv_cuda_py': (a3, a3, a3, a3, a2, a2, a3, a3, float32, a1, a1, a1),
            '_bwd_dq_cuda_py': (a3, a3, a3, a3, a2, a2, a3, float32, a1, a1, a1)}
    out = {}
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


CASES = ['full_ragged', 'causal_ragged', 'causal_nq_gt_nk', 'full_nq_lt_nk_d32', 'na1d_dilated', 'na1d_causal', 'na2d']


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


@pytest.mark.parametrize('kernel', ['_fwd_cuda_py', '_bwd_dkdv_cuda_py', '_bwd_dq_cuda_py'])
def test_ptxas_no_spills_and_shared_memory_fits(ptx, kernel):
    """ptxas -v for sm_90: no spill stores or loads, at most 255 registers per thread, static shared memory at most
    48 KiB (the limit on a block's static __shared__ declarations on every architecture)."""
    exe = _find_ptxas()
    if exe is None:
        pytest.skip('ptxas not found: `pip install "nvidia-cuda-nvcc>=13,<14"` (in the `ptx` extra) or put it on PATH')
    _, folder = ptx
    p = subprocess.run([exe, '-arch=sm_90', '-v', str(folder / f'{kernel}.ptx'), '-o', str(folder / f'{kernel}.cubin')],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f'ptxas failed on {kernel}:\n{p.stderr[-3000:]}'
    facts = {k: int(m.group(1)) for k, rx in PTXAS_RE.items() if (m := re.search(rx, p.stderr + p.stdout))}
    assert {'spill_st', 'spill_ld', 'regs', 'smem'} <= facts.keys(), f'unexpected ptxas report:\n{p.stderr}'
    assert facts['spill_st'] == 0 and facts['spill_ld'] == 0, f'{kernel} spills registers: {facts}'
    assert facts['regs'] <= 255, facts
    assert facts['smem'] <= 48 * 1024, f'{kernel} declares {facts["smem"]} bytes of static shared memory: {facts}'
