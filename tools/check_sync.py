"""Check that the notebooks and the package agree: `nbdev-export` must leave geobook/ unchanged and `nbdev-clean`
must leave nbs/ unchanged. Compares file contents before and after running each command; exits 1 listing the files
that changed (which are left changed, so `git diff` shows what to commit)."""
import hashlib, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def snapshot(folder: Path, pattern: str) -> dict:
    return {p.relative_to(ROOT).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if '.ipynb_checkpoints' not in p.parts and '__pycache__' not in p.parts}

def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

def check(cmd: str, folder: str, pattern: str) -> list[str]:
    "Run `cmd`; the files of `folder` matching `pattern` (and nbs/llms.txt, which nbdev-export also writes) must not change."
    snap = lambda: {**snapshot(ROOT / folder, pattern), **snapshot(ROOT / 'nbs', 'llms.txt')}
    before = snap()
    subprocess.run([str(BIN / cmd)], cwd=ROOT, check=True)
    diff = changed(before, snap())
    print(f"{cmd}: {'leaves ' + folder + '/ unchanged' if not diff else 'CHANGED ' + ', '.join(diff)}")
    return diff

def main() -> int:
    bad = check('nbdev-export', 'geobook', '*.py') + check('nbdev-clean', 'nbs', '*.ipynb')
    if bad: print("Notebooks and package are out of sync or unclean: run `nbdev-export && nbdev-clean` and commit.")
    return 1 if bad else 0

if __name__ == '__main__': sys.exit(main())
