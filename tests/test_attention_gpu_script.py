"""benchmarks/gpu_run.sh must run unchanged on the next GPU: here it runs in its dry mode, under Numba's CUDA simulator on
tiny shapes (CPU only), and must write a JSON with every section the GPU run writes, correct kernels and no error.
Tolerances of the correctness section: float32 kernels against float64, 2e-5 on outputs and 1e-4 on gradients (as in
the chapter); the bfloat16 case is judged relative to the largest entry, within bfloat16's epsilon 2⁻⁷. The tensor-core
section runs with the NumPy emulator in place of the kernels (the simulator cannot run linked CUDA C++)."""
import json, os, shutil, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which('bash') is None or shutil.which('timeout') is None, reason='needs bash and timeout')
def test_gpu_run_dry(tmp_path):
    out = tmp_path / 'attention_gpu_dry.json'
    env = {k: v for k, v in os.environ.items() if k != 'NUMBA_ENABLE_CUDASIM'}
    p = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_run.sh'), '--dry', '--out', str(out)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res['dry_run_on_simulator'] is True and res['benchmark'] == 'attention_gpu'
    assert 'check_error' not in res, res.get('check_error')
    assert {'machine', 'versions', 'sdpa_backends', 'check', 'rows', 'skipped', 'kernels', 'na2d_64x64_k7_s'} <= res.keys()
    assert set(res['check']) == {'flash_full', 'flash_causal', 'flash_causal_bfloat16', 'flash_causal_nq_gt_nk_d128',
                                 'flash_causal_nq_lt_nk', 'na1d_k9_dil3', 'na2d_k5x7_causal'}
    for name, e in res['check'].items():
        assert e['masked_rows_agree'], name
        if e['dtype'] == 'float32':
            assert max(e['o'], e['lse']) < 2e-5 and max(e['dq'], e['dk'], e['dv']) < 1e-4, (name, e)
        else:
            assert max(e['relative'].values()) < 2**-7, (name, e)
    assert res['check']['flash_causal_nq_gt_nk_d128']['masked_rows'] > 0
    rows = res['rows']
    assert {(r['dtype'], r['causal'], r['pass']) for r in rows} == {(d, c, p) for d in ('float32', 'bfloat16')
                                                                   for c in (False, True) for p in ('forward', 'fwd+bwd')}
    assert all(r['flash_s'] > 0 and r['sdpa_s'] > 0 and r['flash_reps'] >= 1 for r in rows)
    # the tensor-core section, with the NumPy emulator standing in for the kernels: the first-call check (emulator
    # against the tiled kernels under the simulator) passes for both dtypes, every comparison is within its tolerance
    assert 'tensor_cores_error' not in res, res.get('tensor_cores_error')
    tc = res['tensor_cores']
    # GEMM error against K: the emulated 3xTF32 (products in float64) is within the GPU tolerance and far below TF32
    acc = tc['accumulation']['rows']['33x17x9']
    assert acc['3xtf32'] <= acc['tol_3xtf32'] and acc['3xtf32'] < acc['tf32'] / 100, acc
    assert tc['failures'] == [] and tc['checks'] and all(c['ok'] for c in tc['checks'].values()), tc['failures']
    assert tc['first_call_check'] == {'cpu bfloat16': True, 'cpu float16': True, 'cpu tf32': True, 'cpu 3xtf32': True,
                                      'cpu bfloat16 causal': True, 'cpu bfloat16 D=128': True,
                                      'cpu bfloat16 D=128 causal': True, 'cpu tf32 causal': True, 'cpu 3xtf32 causal': True}
    assert tc['first_call_check_backward'] == {'cpu bfloat16': True, 'cpu bfloat16 causal': True}   # emulated backward
    # the causal and D = 128 tensor-core forwards (emulated) against float64: O, L (−∞ rows too) and the gradients
    variants = {' '.join(n.split(':')[0].split()[2:4]).replace(' BH=1', '') for n in tc['checks'] if 'D=' in n}
    assert variants == {'D=64 causal', 'D=128', 'D=128 causal'}, variants
    assert sum('D=' in n for n in tc['checks']) == 3 * 5
    assert tc['first_call_warnings'] == []
    # float32 through TF32 (emulated): O and L within the derived bound, both variants and both precisions
    tf32_checks = {n for n in tc['checks'] if n.startswith(('fwd tf32 ', 'fwd 3xtf32 '))}
    assert {' '.join(n.split()[1:3]) for n in tf32_checks} == {'tf32 fwd', 'tf32 fwd_qreg', '3xtf32 fwd'}
    assert {' '.join(n.split()[1:4]) for n in tf32_checks if ' causal ' in n} == \
        {'tf32 fwd causal', 'tf32 fwd_qreg causal', '3xtf32 fwd causal'}
    assert all(tc['checks'][n]['max_err'] <= tc['checks'][n]['bound'] for n in tf32_checks if 'bound' in tc['checks'][n])
    assert {n.split()[1] for n in tc['checks'] if n.startswith('gemm')} == {'bfloat16', 'float16', 'tf32', '3xtf32'}
    assert {(r['dtype'], r['pass']) for r in tc['rows']} == {('bfloat16', 'forward'), ('float16', 'forward'),
                                                             ('bfloat16', 'fwd+bwd'), ('float32', 'forward')}
    assert {(r['D'], r['causal']) for r in tc['rows'] if r['dtype'] == 'bfloat16' and r['pass'] == 'forward'} == \
        {(64, False), (64, True), (128, False), (128, True)}
    assert any(r['dtype'] == 'bfloat16' and r['pass'] == 'fwd+bwd' and r['causal'] for r in tc['rows'])
    for r in tc['rows']:
        assert r['tiled_s'] > 0 and r['sdpa_s'] > 0 and (r['dtype'] == 'float32') == ('tensor_cores_s' not in r), r
        if r['dtype'] == 'float32':     # TF32 (both variants), 3xTF32, SDPA with TF32 allowed, all as ratios
            keys = ['tf32_fwd', 'tf32_fwd_qreg', '3xtf32_fwd']
            assert all(r[f'{k}_s'] > 0 and r[f'{k}_ratio'] == r[f'{k}_s'] / r['sdpa_s'] for k in keys), r
            assert r['sdpa_allow_tf32_s'] > 0, r
            # validate_inputs=False beside each, with the host's time per call of every timing
            assert all(r[f'{k}_unchecked_s'] > 0 and r['host_s'][f'{k}_unchecked_s'] > 0 for k in keys), r
        elif r['pass'] == 'forward' and r['dtype'] == 'bfloat16' and (r['D'], r['causal']) == (64, False):
            assert r['tensor_cores_unchecked_s'] > 0 and r['host_s']['tensor_cores_s'] > 0, r
    # Numba's launch cost on an empty kernel (the dry run: through _launch_cuda only) and torch's sync debug mode
    assert tc['launch_overhead']['launch_cuda_s'] > 0 and 'note' in tc['sync_debug'], tc['launch_overhead']


@pytest.mark.skipif(shutil.which('bash') is None or shutil.which('timeout') is None, reason='needs bash and timeout')
def test_gpu_run_only_tensor_cores_keeps_the_rest(tmp_path):
    """`gpu_run.sh --dry --only tensor_cores --base B --out O`: O is B with its `tensor_cores` section replaced (run
    under the simulator here), every other key unchanged, B itself untouched, the earlier section's `fixed` record
    carried over with the value measured before the fix."""
    base = ROOT / 'benchmarks' / 'results' / 'attention_gpu.json'
    if not base.exists(): pytest.skip('no committed GPU JSON to start from')
    b = tmp_path / 'base.json'
    b.write_text(base.read_text())
    out = tmp_path / 'out.json'
    env = {k: v for k, v in os.environ.items() if k != 'NUMBA_ENABLE_CUDASIM'}
    p = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_run.sh'), '--dry', '--only', 'tensor_cores', '--base',
                        str(b), '--out', str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    old, new = json.loads(b.read_text()), json.loads(out.read_text())
    assert b.read_text() == base.read_text()                                  # the base is read, never written
    assert {k: v for k, v in new.items() if k != 'tensor_cores'} == {k: v for k, v in old.items() if k != 'tensor_cores'}
    tc = new['tensor_cores']
    assert tc['run']['dry_run_on_simulator'] is True and tc['failures'] == [] and 'tensor_cores_error' not in new
    for name, f in old['tensor_cores'].get('fixed', {}).items():
        # 'before' stays the value measured before the fix: the base's own record of it once a re-run has carried it
        # over (the base's check then holds a later measurement), else the base's check
        before = f.get('before', old['tensor_cores']['checks'][name])
        assert tc['fixed'][name]['before'] == before and tc['fixed'][name]['after'] == f['after']
        assert not before['ok']                        # (the dry run does not re-run the GPU-size check)
    # the rows it did not re-measure (GPU sizes) keep their earlier values, marked with the earlier run's date
    assert all(r['from_run'] == old['machine']['date'] for r in tc['rows'] if r['N'] > 64)


def test_gpu_run_refuses_without_a_gpu_and_says_what_to_do():
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is present: the real run is not a unit test')
    p = subprocess.run(['bash', str(ROOT / 'benchmarks' / 'gpu_run.sh')], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and '--dry' in p.stderr, p.stderr[-2000:]
