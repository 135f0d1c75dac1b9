"""The library a researcher installs: `pip install geobook` brings torch, numpy, numba, tqdm and threadpoolctl and nothing else, so no
module may import anything else when it is imported (matplotlib, SciPy, SymPy, scikit-learn, Jupyter are the book's,
in the `book`/`dev` extras; numba-cuda is the `cuda` extra). Lazy imports inside a function are allowed where a
function needs an optional library and says so."""
import ast, subprocess, sys, tomllib
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'geobook'
LIBRARY_MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_') and p.stem != 'book')
BOOK_ONLY = ('matplotlib', 'sympy', 'sklearn', 'IPython', 'ipywidgets', 'pandas', 'nbdev', 'ot')


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    names = {d.split(';')[0].split('[')[0].split('>')[0].split('<')[0].split('=')[0].split('~')[0].strip() for d in deps}
    return {n.replace('-', '_').lower() for n in names}


def _top_level_imports(path: Path) -> set[str]:
    "Packages a module imports at import time: module-level import statements (not those inside functions)."
    tree, found = ast.parse(path.read_text()), set()
    for node in tree.body:
        stmts = [node] + [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))] \
            if isinstance(node, (ast.If, ast.Try, ast.With)) else [node]
        for n in stmts:
            if isinstance(n, ast.Import): found |= {a.name.split('.')[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module: found.add(n.module.split('.')[0])
    return found


def test_declared_dependencies_are_the_six():
    "llvmlite comes with numba (its LLVM binding); chapter 5 imports it directly for its SIMD intrinsics."
    assert _declared() == {'torch', 'numpy', 'numba', 'tqdm', 'threadpoolctl', 'llvmlite'}


@pytest.mark.parametrize('module', LIBRARY_MODULES)
def test_module_imports_only_declared_packages(module):
    "Every module-level import is the standard library, geobook itself or a declared dependency."
    third_party = {m for m in _top_level_imports(PKG / f'{module}.py')
                   if m not in sys.stdlib_module_names and m not in ('geobook', '__future__')}
    assert third_party <= _declared(), f'geobook.{module} imports {sorted(third_party - _declared())} at import time'


@pytest.mark.parametrize('module', LIBRARY_MODULES)
def test_import_loads_no_book_library(module):
    "Importing the module (in a fresh interpreter) loads none of the book's libraries; SciPy only if numba brings it."
    code = (f"import sys, geobook.{module}\n"
            f"bad = [m for m in {BOOK_ONLY!r} if m in sys.modules]\n"
            "import numba\n"
            "print(bad)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == '[]', f'import geobook.{module} loads {out.strip()}'
