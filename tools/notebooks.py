"""The book's notebooks in reading order, and the nbdev flags a run skips (shared by run_book.py and the tests)."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
ALL_FLAGS = ('slow', 'cuda')

def chapters() -> list[Path]:
    "index.ipynb first, then the numbered notebooks in order; files starting with '_' or '.' are not pages."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(nbs, key=lambda p: (p.name != 'index.ipynb', p.name))

def skip_flags() -> list[str]:
    "Flags to skip: all of `slow cuda` except those listed in GEOBOOK_TEST_FLAGS (make test-all: `slow`, and `cuda` where a GPU is)."
    wanted = set(os.environ.get('GEOBOOK_TEST_FLAGS', '').split())
    return [f for f in ALL_FLAGS if f not in wanted]

def error_outputs(nb) -> list[str]:
    "Error outputs left in executed cells, e.g. a figure that failed to render (nbdev's runner does not raise for these)."
    errs = []
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []) if c.get('cell_type') == 'code' else []:
            if o.get('output_type') == 'error': errs.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}".strip())
            elif o.get('output_type') == 'stream':
                text = ''.join(o.get('text', ''))
                if 'Error in callback' in text or 'Traceback (most recent call last)' in text:
                    errs.append(f"cell {i}: {text.strip().splitlines()[0][:200]}")
    return errs

def run_notebook(fn: Path, save: bool = False):
    """Execute notebook `fn` with nbdev's own runner (`nbdev.test.test_nb`, skipping `skip_flags()`), keeping the executed
    notebook to look for error outputs. Returns (ok, seconds, errors); writes the outputs back to `fn` only when `save`
    and the run succeeded."""
    import nbdev.test as nbt
    kept = []
    real_write = nbt.write_nb
    nbt.write_nb = lambda nb, path: kept.append(nb)
    try: ok, secs = nbt.test_nb(fn, skip_flags=skip_flags(), save=True)
    finally: nbt.write_nb = real_write
    errors = error_outputs(kept[0]) if kept else []
    if ok and not errors and save: real_write(kept[0], fn)
    return ok and not errors, secs, errors

def run_isolated(fn: Path, save: bool = False, timeout: float | None = None):
    """`run_notebook` in a fresh Python process, as a reader's fresh kernel would: no state (matplotlib backends,
    numba or torch settings, imported modules) leaks from one chapter into the next. Returns (ok, seconds, errors);
    the child's output (tracebacks included) goes to this process's stdout/stderr."""
    import json, subprocess, sys
    cmd = [sys.executable, str(Path(__file__).resolve()), str(fn)] + (['--save'] if save else [])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    lines = proc.stdout.rstrip().splitlines()
    if lines and lines[-1].startswith('{'):
        if lines[:-1]: print('\n'.join(lines[:-1]))
        res = json.loads(lines[-1])
        return res['ok'], res['seconds'], res['errors']
    print(proc.stdout)
    return False, float('nan'), [f'the notebook process exited with code {proc.returncode}']

if __name__ == '__main__':
    import json, sys
    ok, secs, errors = run_notebook(Path(sys.argv[1]), save='--save' in sys.argv[2:])
    print(json.dumps({'ok': ok, 'seconds': secs, 'errors': errors}))
