"""Offline checks of the tensor-core prototype (no GPU needed). Exits non-zero on any failure.

For sm_80 and sm_90, for the GEMM and the FlashAttention-2 forward kernels, bf16 and f16:
  numba-cuda compile_all(output='ltoir') -> [kernel LTO-IR, mma_helper.cu LTO-IR (NVRTC)] -> nvJitLink -lto
  -> linked PTX: the mma.sync instruction is there, no `call`, no local memory;
  -> ptxas -v on that PTX: 0-byte stack frame, no spill stores/loads, registers;
  -> cubin linked directly by nvJitLink -> nvdisasm SASS: HMMA.16816 instructions, no LDL/STL, no CALL to another
     function other than ptxas's own IEEE-division slow path; cuobjdump -res-usage.
Then the NumPy emulator tests (test_emulate.py).

Run: .venv/bin/python prototypes/tensor_cores/check_offline.py   (writes out/report.json)
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / 'out'
CCS = [(8, 0), (9, 0)]
KERNELS = [('gemm', 'bfloat16'), ('gemm', 'float16'), ('gemm_f32', 'tf32'), ('gemm_f32', '3xtf32'),
           ('fwd', 'bfloat16'), ('fwd', 'float16')]
PTX_MMA = {'bfloat16': 'mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32',
           'float16': 'mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32',
           'tf32': 'mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32',
           '3xtf32': 'mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32'}
SASS_MMA = {'bfloat16': 'HMMA.16816.F32.BF16', 'float16': 'HMMA.16816.F32', 'tf32': 'HMMA.1688.F32.TF32',
            '3xtf32': 'HMMA.1688.F32.TF32'}
ALLOWED_CALLS = re.compile(r'__cuda_sm20_(rcp|div)_rn_f32_slowpath')   # ptxas's own IEEE fdiv slow path


def worker(cc):
    """Compile every kernel for one compute capability (own process: the fake current device is global)."""
    sys.path.insert(0, str(HERE))
    import tc_kernels as T
    import offline_build as B
    from numba.cuda.compiler import compile_all
    B._fake_device(cc)
    res = {}
    for kind, dtype in KERNELS:
        name = f'{kind}_{dtype}_sm{cc[0]}{cc[1]}'
        fn, sig, lb = {'gemm': lambda: (T.gemm_kernel(dtype), T.gemm_sig(), None),
                       'gemm_f32': lambda: (T.gemm_f32_kernel(dtype), T.gemm_f32_sig(), None),
                       'fwd': lambda: (T.flash_fwd_kernel(dtype), T.fwd_sig(), T.FWD_LAUNCH_BOUNDS)}[kind]()
        codes, _ = compile_all(fn, sig, device=False, cc=cc, output='ltoir', abi='numba', launch_bounds=lb)
        pieces = [c.code if hasattr(c, 'code_type') else c for c in codes]
        ptx, _ = B.nvjitlink_link(pieces, cc, 'ptx')
        (OUT / f'{name}.ptx').write_text(ptx)
        ptxas_log = B.ptxas_report(OUT / f'{name}.ptx', cc, OUT / f'{name}.ptxas.cubin')
        cubin, link_log = B.nvjitlink_link(pieces, cc, 'cubin')
        (OUT / f'{name}.cubin').write_bytes(cubin)
        sass, tool = B.sass(OUT / f'{name}.cubin')
        (OUT / f'{name}.sass').write_text(sass)
        ops = B.opcode_counts(sass)
        calls = re.findall(r'CALL\.\S+\s+`\(([^)]*)\)', sass)
        instr = [l for l in ptx.splitlines() if l.strip() and not l.strip().startswith(('//', '.', '{', '}', ')'))]
        res[name] = {
            'ltoir_pieces': len(pieces),
            'ptx_mma': ptx.count(PTX_MMA[dtype]),
            'ptx_calls': len([l for l in instr if re.match(r'\s*(@%p\d+\s+)?call(\.uni)?\b', l)]),
            'ptx_local': ptx.count('.local'),
            'ptxas': B.parse_ptxas(ptxas_log),
            'nvjitlink_ptxas': B.parse_ptxas(link_log),
            'sass_tool': tool,
            'sass_instructions': sum(ops.values()),
            'sass_hmma': sum(v for k, v in ops.items() if k.startswith(SASS_MMA[dtype]) and
                             (dtype != 'bfloat16') == ('BF16' not in k)),
            'sass_ldl_stl': sum(v for k, v in ops.items() if k.startswith(('LDL', 'STL'))),
            'sass_calls': calls,
            'sass_shfl': sum(v for k, v in ops.items() if k.startswith('SHFL')),
            'sass_mufu_ex2': ops.get('MUFU.EX2', 0),
            'sass_lds': sum(v for k, v in ops.items() if k.startswith('LDS')),
            'sass_f2fp_pack': sum(v for k, v in ops.items() if k.startswith('F2FP')),
            'res_usage': ' '.join(B.res_usage(OUT / f'{name}.cubin').split()[-12:]),
        }
    # control: the same regex finds the call in the kernel's own PTX before linking (the helper is external there)
    from numba.cuda import compile_ptx
    k, _ = compile_ptx(T.gemm_kernel('bfloat16'), T.gemm_sig(), cc=cc)
    res[f'control_unlinked_gemm_sm{cc[0]}{cc[1]}'] = {
        'ptx_calls': len([l for l in k.splitlines() if re.match(r'\s*(@%p\d+\s+)?call(\.uni)?\b', l)]),
        'ptx_mma': k.count('mma.sync')}
    print('RESULT' + json.dumps(res))


def versions():
    import importlib.metadata as md
    v = {p: md.version(p) for p in ('numba', 'numba-cuda', 'cuda-bindings', 'nvidia-cuda-nvrtc', 'nvidia-nvjitlink',
                                    'nvidia-nvvm', 'nvidia-cuda-nvcc', 'numpy')}
    sys.path.insert(0, str(HERE))
    import offline_build as B
    for tool in (B.PTXAS, B.NVDISASM, B.CUOBJDUMP):
        p = subprocess.run([str(tool), '--version'], capture_output=True, text=True)
        v[tool.name] = p.stdout.strip().splitlines()[-1] if p.returncode == 0 else 'missing'
    return v


def main():
    OUT.mkdir(exist_ok=True)
    failures = []
    report = {'versions': versions(), 'kernels': {}}
    for cc in CCS:
        p = subprocess.run([sys.executable, __file__, '--worker', f'{cc[0]}{cc[1]}'], capture_output=True, text=True,
                           timeout=900)
        line = [l for l in p.stdout.splitlines() if l.startswith('RESULT')]
        if p.returncode or not line:
            failures.append(f'compilation for sm_{cc[0]}{cc[1]} failed:\n{p.stderr[-3000:]}')
            continue
        report['kernels'].update(json.loads(line[0][6:]))
    print(f'{"kernel":26s} {"regs":>4s} {"stack":>5s} {"spill":>5s} {"smem":>6s} {"HMMA":>4s} {"SASS":>5s} '
          f'{"LDS":>4s} {"SHFL":>4s} {"EX2":>4s} calls')
    for name, r in list(report['kernels'].items()):
        if name.startswith('control_'):
            print(f'{name}: {r} (expected: 1 call, 0 mma: the regex sees an unresolved call)')
            if r['ptx_calls'] < 1 or r['ptx_mma'] != 0:
                failures.append(f'{name}: the call detector found no call in unlinked PTX ({r})')
            continue
        f = r['ptxas']
        print(f'{name:26s} {f.get("regs", -1):4d} {f.get("stack", -1):5d} {f.get("spill_st", -1) + f.get("spill_ld", -1):5d} '
              f'{f.get("smem", -1):6d} {r["sass_hmma"]:4d} {r["sass_instructions"]:5d} {r["sass_lds"]:4d} '
              f'{r["sass_shfl"]:4d} {r["sass_mufu_ex2"]:4d} {r["sass_calls"]}')
        # gemm: the k-loop body (1 mma per k-step, 3 for 3xTF32; LLVM may unroll it); fwd: 32 QKᵀ + 32 PV per K tile
        expect_mma = 64 if name.startswith('fwd') else r['ptx_mma']
        checks = {
            'two LTO-IR pieces (kernel + helper)': r['ltoir_pieces'] == 2,
            'mma.sync in linked PTX': r['ptx_mma'] >= 1 and r['ptx_mma'] == expect_mma,
            'no call in linked PTX (helper inlined)': r['ptx_calls'] == 0,
            'no local memory in PTX': r['ptx_local'] == 0,
            '0-byte stack frame': f.get('stack') == 0,
            'no spills': f.get('spill_st') == 0 and f.get('spill_ld') == 0,
            'registers <= 128': 0 < f.get('regs', 999) <= 128,
            'as many HMMA in SASS as mma.sync in PTX': r['sass_hmma'] == expect_mma,
            'no LDL/STL in SASS': r['sass_ldl_stl'] == 0,
            # `@!P CALL.REL.NOINC .L_x_N` + BRA is how sm_80 SASS leaves a loop (a local label of the same
            # function, not a subroutine); calls to other functions must be ptxas's fdiv slow path
            'no CALL in SASS but the fdiv slow path': all(ALLOWED_CALLS.search(c) for c in r['sass_calls']
                                                           if not c.startswith('.L_')),
            'nvJitLink cubin: same registers as ptxas': r['nvjitlink_ptxas'].get('regs') == f.get('regs'),
        }
        for what, ok in checks.items():
            if not ok:
                failures.append(f'{name}: {what} ({r})')
    print('versions:', json.dumps(report['versions']))
    p = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(HERE / 'test_emulate.py')],
                       capture_output=True, text=True, cwd=HERE, timeout=900)
    print('emulator tests:', p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-500:])
    report['emulator_tests'] = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ''
    if p.returncode:
        failures.append('emulator tests failed:\n' + p.stdout[-3000:])
    report['failures'] = failures
    (OUT / 'report.json').write_text(json.dumps(report, indent=1))
    for f in failures:
        print('FAIL:', f[:2000])
    print('OK' if not failures else f'{len(failures)} FAILURES')
    return 1 if failures else 0


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--worker':
        worker((int(sys.argv[2][0]), int(sys.argv[2][1:])))
    else:
        sys.exit(main())
