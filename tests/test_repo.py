"""The repository as a maintainer sees it: what the notebooks weigh, whether their figures are legible on the site,
whether the notebooks name the kernel `make lab` installs, and whether the package's own docs list every module.

- Size budget: every `make book` rewrites the saved figures, so git history grows by the notebooks' size with each
  rebuild. The notebooks together stay within 4 MB and no embedded figure exceeds 300 kB (decimal units).
- Figure width: the site shows a figure in a 45rem (765 px) column. The book style draws at 100 dpi, so a figure W
  inches wide is 100·W px and is shown at min(1, 765 / (100·W)) of its size; 10-pt labels (13.9 px when drawn) stay
  at 11 px or more on screen when W ≤ 9.6 in. Rule for chapter authors: `book_figure(..., width=w)` with w ≤ 9.6 (two
  or three panels side by side fit; stack more in rows), no font below 8 pt. Checked on the saved PNGs, ≤ 960 px wide.
- The kernel: every notebook names the kernel `make lab` installs (`geobook`), with the display name nbdev-clean
  writes, so that saving from JupyterLab changes nothing.
- Package docs: `help(geobook)` (the package docstring nbdev-export writes) and `nbs/llms.txt` name every public
  module, and every module docstring's `Docs:` line points at a page the site builds.

The counts are printed (`pytest -s tests/test_repo.py`): the numbers to report.
"""
import ast, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from notebooks import NBS, cell_flags, chapters, is_exported, png_outputs, png_size, python_body, read_nb

MAX_TOTAL_BYTES = 4_000_000          # all notebooks together
MAX_FIGURE_BYTES = 300_000           # one embedded PNG (decoded)
MAX_FIGURE_WIDTH_PX = 960            # 9.6 in at the book style's 100 dpi: labels ≥ 11 px in the site's 765-px column
NOTEBOOKS = sorted(NBS.glob('*.ipynb'))

def kb(n: int) -> str: return f'{n / 1000:.0f} kB'


def test_notebooks_within_the_size_budget():
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS}
    total = sum(sizes.values())
    print(f'\nnotebooks: {total / 1e6:.2f} MB in all (budget {MAX_TOTAL_BYTES / 1e6:.0f} MB): ' +
          ', '.join(f'{n} {kb(s)}' for n, s in sorted(sizes.items(), key=lambda x: -x[1])))
    assert total <= MAX_TOTAL_BYTES, (f'the notebooks hold {total / 1e6:.2f} MB, over the {MAX_TOTAL_BYTES / 1e6:.0f} MB '
                                      'budget: smaller or fewer figures (fewer scatter points, rasterized=True)')

def test_every_figure_within_the_size_budget():
    figs = [(p.name, i, len(png)) for p in NOTEBOOKS for i, png in png_outputs(p)]
    per_nb = {}
    for name, _, n in figs: per_nb[name] = per_nb.get(name, 0) + n
    print(f'\n{len(figs)} figures, {sum(n for *_, n in figs) / 1e6:.2f} MB of PNG: ' +
          ', '.join(f'{n} {kb(s)}' for n, s in sorted(per_nb.items(), key=lambda x: -x[1])))
    big = [f'{name} cell {i}: {kb(n)}' for name, i, n in figs if n > MAX_FIGURE_BYTES]
    assert not big, f'figures over {kb(MAX_FIGURE_BYTES)}: {big}'

def test_figures_legible_on_the_site():
    figs = [(p.name, i, *png_size(png)) for p in NOTEBOOKS for i, png in png_outputs(p)]
    wide = [f'{name} cell {i}: {w} px' for name, i, w, h in figs if w > MAX_FIGURE_WIDTH_PX]
    print(f'\nfigure widths: {sorted({w for *_, w, h in figs})}')
    assert not wide, (f'{len(wide)} figures wider than {MAX_FIGURE_WIDTH_PX} px: the site shrinks them until their labels '
                      f'are under 11 px. Draw them at most {MAX_FIGURE_WIDTH_PX / 100} in wide (book_figure(width=...)), '
                      f'more panels in rows. (Figures saved before tools/notebooks.py saved plain PNG were "retina", '
                      f'at twice the pixels: saving the chapter again halves them.) {wide}')


def makefile_kernel() -> tuple[str, str]:
    "The kernel name and display name `make lab` installs (read from the Makefile)."
    mk = (ROOT / 'Makefile').read_text()
    name = re.search(r'^KERNEL\s*:?=\s*(\S+)', mk, re.M).group(1)
    display = re.search(r'--display-name\s+"([^"]+)"', mk).group(1)
    return name, display

def test_notebooks_name_the_kernel_make_lab_installs():
    """The notebooks name the kernel `make lab` installs. nbdev-clean writes a notebook's kernel display name as its
    name, and JupyterLab writes the installed kernel's display name into a notebook it saves: the two agree only when
    the kernel is installed with its name as display name (otherwise every save from JupyterLab changes the metadata,
    and `make test`'s clean check reverts it)."""
    name, display = makefile_kernel()
    specs = {p.name: read_nb(p)['metadata'].get('kernelspec') or {} for p in NOTEBOOKS}
    bad = {n: s for n, s in specs.items() if s.get('name') != name}
    assert not bad, f'`make lab` installs kernel {name!r}; these notebooks name another: {bad}'
    assert display == name, (f'the Makefile installs kernel {name!r} with display name "{display}", but nbdev-clean '
                             f'writes display_name {name!r} into every notebook: install it with --display-name "{name}"')
    spec = Path(sys.prefix) / 'share' / 'jupyter' / 'kernels' / name / 'kernel.json'
    if spec.exists():      # installed by `make` in this environment: it must run this environment's Python
        argv = json.loads(spec.read_text())['argv']
        assert Path(argv[0]).parent == Path(sys.executable).parent, (spec, argv)


def public_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / 'geobook').glob('*.py') if not p.stem.startswith('_'))

def module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ''

def test_package_docs_list_every_module():
    "help(geobook) and nbs/llms.txt (both written by nbdev-export) name every public module of the package."
    doc, llms = module_docstring(ROOT / 'geobook' / '__init__.py'), (NBS / 'llms.txt').read_text()
    missing = {where: [m for m in public_modules() if not re.search(rf'\bgeobook\.{m}\b', text)]
               for where, text in (('help(geobook)', doc), ('nbs/llms.txt', llms))}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, (f'modules missing from the package docs: {missing}. nbdev-export lists a module there only when '
                         'its docstring says more than its summary and Docs link; nbs/index.ipynb lists them all in '
                         'its exported "Use the package" cell: add the new module there')

def test_module_docs_links_point_at_pages_the_site_builds():
    "Each module docstring ends with `Docs: <site>/<page>.html.md`: the page of a notebook the site renders."
    from nbdev.config import nbpath2html
    pages = {nbpath2html(p.name).name + '.md' for p in chapters()}
    bad = {}
    for py in sorted((ROOT / 'geobook').glob('*.py')):
        for url in re.findall(r'^Docs:\s*(\S+)\s*$', module_docstring(py), re.M):
            if url.rsplit('/', 1)[-1] not in pages: bad[py.name] = url
    assert not bad, f'Docs: links to pages no notebook makes (the site makes {sorted(pages)}): {bad}'


def test_long_and_gpu_cells_guard_themselves():
    """A student's Run All skips long and GPU work: every `slow` cell's body runs under `if long_cell(RUN_LONG):` and
    every `cuda` cell's under `if cuda_cell():` (nbdev-test drops flagged cells; JupyterLab runs them all)."""
    bad = []
    for p in NOTEBOOKS:
        for i, c in enumerate(read_nb(p)['cells']):
            if c['cell_type'] != 'code': continue
            flags, src = cell_flags(c), ''.join(c['source'])
            if 'slow' in flags and 'long_cell(RUN_LONG)' not in src: bad.append(f'{p.name} cell {i}: slow without long_cell')
            if 'cuda' in flags and 'cuda_cell()' not in src: bad.append(f'{p.name} cell {i}: cuda without cuda_cell')
    assert not bad, bad



def test_cells_that_import_only_import():
    """nbdev executes every cell that contains an import while it renders the site (to make show_doc work), without
    the cells before it: a non-exported cell with an import must hold nothing else, or the site build breaks on a
    NameError (exported cells are exempt: they run in order)."""
    bad = []
    for p in NOTEBOOKS:
        for i, c in enumerate(read_nb(p)['cells']):
            if c['cell_type'] != 'code' or is_exported(c): continue
            try: tree = ast.parse(python_body(''.join(c['source'])))
            except SyntaxError: continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
               any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
                bad.append(f'{p.name} cell {i}')
    assert not bad, f'cells that mix imports with other code: {bad}'


def test_no_cell_shows_an_object_repr():
    """A cell whose last line returns a matplotlib object (`ax.legend(...)`, `plt.title(...)`) shows its repr, e.g.
    `<matplotlib.legend.Legend at 0x7fd4e75b1350>`: the address changes from run to run, so the JupyterLab test's
    identical-rerun check fails on it (it did, in chapter 2). End such cells with `plt.show()` or `;`."""
    obj = re.compile(r'^<[\w.]+( object)?( at 0x[0-9a-f]+)?>$')
    bad = []
    for p in NOTEBOOKS:
        for i, c in enumerate(read_nb(p)['cells']):
            for o in c.get('outputs', []) if c['cell_type'] == 'code' else []:
                text = ''.join(o.get('data', {}).get('text/plain', [])) if o.get('output_type') == 'execute_result' else ''
                if obj.match(text.strip()): bad.append(f'{p.name} cell {i}: {text.strip()}')
    assert not bad, f'cells that show an object repr (end them with plt.show() or ;): {bad}'


def test_multi_line_description_survives():
    "A description of several `>` lines is kept whole (chapter 4's was once cut after its first line) on every page."
    from notebooks import title_block
    nb = {'cells': [{'cell_type': 'markdown', 'metadata': {}, 'source':
                     '# Sliced Wasserstein\n\n> Optimal transport between clouds by sorting projections\n'
                     '> instead of solving a linear program.\n\nThe paragraph after it.'}]}
    title, desc, rest = title_block(nb)
    assert title == 'Sliced Wasserstein' and rest == 'The paragraph after it.'
    assert desc == 'Optimal transport between clouds by sorting projections\ninstead of solving a linear program.'
    import pytest
    pytest.importorskip('pypandoc')
    import build_site                                   # the site's <meta> and cards: one paragraph, nothing dropped
    assert build_site.plain_texts([desc]) == ['Optimal transport between clouds by sorting projections instead of '
                                              'solving a linear program.']


def test_appendix_cells_close_the_page():
    "Cells marked `#| appendix: true` run first in the notebook but close the page, under one heading, in their order."
    import pytest
    pytest.importorskip('pypandoc')
    import build_site
    code = lambda s: {'cell_type': 'code', 'metadata': {}, 'source': s, 'outputs': [], 'execution_count': None}
    md = lambda s: {'cell_type': 'markdown', 'metadata': {}, 'source': s}
    nb = {'cells': [code('#| appendix: true\nimport math'), code('#| appendix: true\nx = 1'), md('## Verdicts'),
                    code('print(x)'), md('## Checks')]}
    build_site.apply_cell_options(nb, {}, '')
    assert [c['source'] for c in nb['cells']] == ['## Verdicts', 'print(x)', '## Checks', '## How this page is made',
                                                  'import math', 'x = 1']
