"""The bad-input sweep: every exported callable of every module, called with wrong types, wrong shapes, empty, non-finite,
wrong-dtype, zero/negative/huge sizes and huge labels, one argument at a time (all others valid), must raise a
`ValueError` or `TypeError` whose message names that argument, or return a documented result (listed per call in
`tests/bad_input_specs.py`, and then a finite one).

Each module's cases run in a child process (torch is imported once per module, not per case) whose address space is
capped a few GB above what it holds after its imports: a call that tries to allocate gigabytes from a bad argument
fails with a memory error, which counts as a failure, instead of taking the machine down. Each case also has a time
limit. `python tests/test_bad_input.py` prints the counts per module (the README's testing section quotes them).
"""
from __future__ import annotations
import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CASE_TIMEOUT_S = 60          # one case; the slowest valid calls take a few seconds on a loaded 2-core machine
HEADROOM_GB = 3              # address space allowed above the child's size after its imports


# ---------------------------------------------------------------------------------------------------------------------
# the child: run every case of one module, one JSON line per case
def _cap_memory():
    import resource
    with open('/proc/self/status') as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize:'))
    limit = vm + HEADROOM_GB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    return limit

def _finite(out) -> bool:
    import numpy as np, torch
    if isinstance(out, torch.Tensor): return not out.is_floating_point() or bool(torch.isfinite(out).all())
    if isinstance(out, np.ndarray): return not np.issubdtype(out.dtype, np.floating) or bool(np.isfinite(out).all())
    if isinstance(out, float): return out == out and abs(out) != float('inf')
    if isinstance(out, (tuple, list)): return all(_finite(o) for o in out)
    if isinstance(out, dict): return all(_finite(o) for o in out.values())
    return True

def run_child(module: str, start: int = 0) -> None:
    import signal, warnings
    import bad_input_specs as S
    cases = S.cases(module)
    _cap_memory()
    def alarm(*_): raise TimeoutError(f'case took more than {CASE_TIMEOUT_S} s')
    signal.signal(signal.SIGALRM, alarm)
    for i, case in enumerate(cases[start:], start):
        print(json.dumps({'start': i, 'id': case.id}), flush=True)
        res = {'i': i, 'id': case.id, 'param': case.param, 'accept': case.accepted}
        signal.alarm(CASE_TIMEOUT_S)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                out = case.run()
            res.update(status='returned', finite=_finite(out))
        except (ValueError, TypeError) as e:
            res.update(status='raised', exc=type(e).__name__, msg=str(e)[:400])
        except MemoryError as e:
            res.update(status='memory', exc=type(e).__name__, msg=str(e)[:200])
        except BaseException as e:   # noqa: BLE001 - every other outcome is a finding
            msg = str(e)
            status = 'memory' if "can't allocate memory" in msg or 'out of memory' in msg.lower() else 'other'
            res.update(status=status, exc=type(e).__name__, msg=msg[:400])
        finally:
            signal.alarm(0)
        print(json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# the parent: run a module's cases in children, restarting after a crash
def run_module(module: str) -> list[dict]:
    results, start = [], 0
    while True:
        cmd = [sys.executable, __file__, '--child', module, str(start)]
        env = dict(os.environ, GEOBOOK_NO_PROGRESS='1', OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                                  timeout=CASE_TIMEOUT_S * 20 + 120)
            out, err, crashed = proc.stdout, proc.stderr, proc.returncode != 0
        except subprocess.TimeoutExpired as e:
            out, err, crashed = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or ''), '', True
        last_start = None
        for line in out.splitlines():
            if not line.startswith('{'): continue
            rec = json.loads(line)
            if 'start' in rec: last_start = rec
            else: results.append(rec); last_start = None
        if not crashed: return results
        if last_start is None:
            raise RuntimeError(f'the bad-input child for {module} failed before its first case:\n{err[-3000:]}')
        results.append({'i': last_start['start'], 'id': last_start['id'], 'param': None, 'accept': False,
                        'status': 'crashed', 'msg': err.strip().splitlines()[-1][:400] if err.strip() else 'killed'})
        start = last_start['start'] + 1


def verdict(r: dict) -> str | None:
    "None if the case behaved, else what went wrong."
    if r['status'] == 'raised':
        name = r['param']
        if name and name.lower() not in r['msg'].lower():
            return f"raised {r['exc']} without naming `{name}`: {r['msg']}"
        return None
    if r['status'] == 'returned':
        if not r['accept']: return 'returned normally (expected a ValueError/TypeError naming the argument)'
        if not r['finite']: return 'returned a non-finite result'
        return None
    return f"{r['status']}: {r.get('exc', '')}: {r.get('msg', '')}"


def summary(results: dict[str, list[dict]]) -> str:
    lines = []
    for m, rs in results.items():
        raised = sum(r['status'] == 'raised' and verdict(r) is None for r in rs)
        documented = sum(r['status'] == 'returned' and verdict(r) is None for r in rs)
        bad = sum(verdict(r) is not None for r in rs)
        lines.append(f'{m:<18} {len(rs):5d} cases: {raised:5d} clear errors, {documented:3d} documented results, {bad:3d} failures')
    return '\n'.join(lines)


if __name__ == '__main__' and len(sys.argv) > 1 and sys.argv[1] == '--child':
    run_child(sys.argv[2], int(sys.argv[3]))
    sys.exit(0)


# ---------------------------------------------------------------------------------------------------------------------
# pytest
import pytest
import bad_input_specs as S


def test_every_export_has_a_spec():
    "Each exported callable is either swept or listed in `EXEMPT` with the reason."
    missing = S.unswept()
    assert not missing, f'exported callables with no bad-input spec in tests/bad_input_specs.py: {missing}'


@pytest.mark.parametrize('module', S.MODULES)
def test_bad_input(module):
    rs = run_module(module)
    assert rs, f'no cases for {module}'
    failures = [f"{r['id']}: {v}" for r in rs if (v := verdict(r)) is not None]
    print(summary({module: rs}))
    assert not failures, f'{len(failures)} of {len(rs)} bad-input cases misbehaved:\n' + '\n'.join(failures)


if __name__ == '__main__':
    mods = sys.argv[1:] or S.MODULES
    res = {m: run_module(m) for m in mods}
    for m, rs in res.items():
        for r in rs:
            if (v := verdict(r)) is not None: print(f"FAIL {r['id']}: {v}")
    print(summary(res))
