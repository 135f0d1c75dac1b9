"""The book's notebooks read as JSON, in one place for tools/build_site.py, tools/run_book.py and the tests: the reading
order, a cell's text, nbdev directives and flags, a chapter's title block, the names it exports, its figures and what
its cells wrote to stderr; and the runner behind `python tools/notebooks.py nbs/X.ipynb [--save]`, which executes one
notebook with nbdev's own runner (skipping the flags GEOBOOK_TEST_FLAGS does not name) and prints one JSON line
`{"ok": ..., "seconds": ..., "errors": [...]}`.

Nothing here writes a notebook except `run_notebook(..., save=True)` and `--compact` (which re-encodes the saved
figures as palette PNGs without running anything).
"""
import ast, base64, json, os, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
ALL_FLAGS = ('slow', 'cuda')
EXPORT_DIRECTIVES = ('export', 'exports')         # cells whose public names nbdev puts in the module's __all__

# ---------------------------------------------------------------------------------------------------------------------
# notebooks and cells
def chapters() -> list[Path]:
    "index.ipynb first, then the numbered notebooks in order; files starting with '_' or '.' are not pages."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(nbs, key=lambda p: (p.name != 'index.ipynb', p.name))

def read_nb(nb) -> dict:
    "The notebook JSON of path `nb` (a dict passes through unchanged)."
    return nb if isinstance(nb, dict) else json.loads(Path(nb).read_text(encoding='utf-8'))

def cell_source(cell) -> str:
    "A cell's text (nbformat stores it as one string or as a list of lines)."
    s = cell.get('source', '')
    return ''.join(s) if isinstance(s, list) else s

_DIRECTIVE = re.compile(r'^\s*#\s?\|\s?(.*?)\s*$')

def split_directives(source: str) -> tuple[list[str], str]:
    "The leading `#| ...` lines of a cell (without the `#|`) and the rest of its text."
    lines, found = source.splitlines(), []
    while lines and _DIRECTIVE.match(lines[0]): found.append(_DIRECTIVE.match(lines.pop(0)).group(1))
    return found, '\n'.join(lines)

def directives(source: str) -> dict:
    """A cell's leading directives: nbdev's (`#| export`, `#| default_exp sliced`, `#| slow`) as {name: [args]}, and
    Quarto's cell options (`#| echo: false`, `#| code-fold: true`) as {key: YAML value}."""
    import yaml
    out = {}
    for line in split_directives(source)[0]:
        m = re.match(r'^([\w-]+)\s*:\s*(.*)$', line)
        if m:
            try: out[m.group(1)] = yaml.safe_load(m.group(2)) if m.group(2) else None
            except yaml.YAMLError: out[m.group(1)] = m.group(2)
        elif line.split(): out[line.split()[0]] = line.split()[1:]
    return out

def cell_flags(cell) -> set[str]:
    "The nbdev test flags (`slow`, `cuda`) of a code cell."
    if cell.get('cell_type') != 'code': return set()
    return set(directives(cell_source(cell))) & set(ALL_FLAGS)

def is_exported(cell) -> bool:
    "Whether nbdev exports this code cell's public names (`#| export` / `#| exports`)."
    return cell.get('cell_type') == 'code' and any(d in directives(cell_source(cell)) for d in EXPORT_DIRECTIVES)

def default_exp(nb) -> str | None:
    "The module a notebook exports to (`#| default_exp name`), or None."
    for c in read_nb(nb)['cells']:
        args = directives(cell_source(c)).get('default_exp') if c.get('cell_type') == 'code' else None
        if args: return args[0]
    return None

def python_body(source: str) -> str:
    "A code cell's text without directives and IPython magics/shell lines, for `ast.parse`."
    return '\n'.join(l for l in split_directives(source)[1].splitlines() if not l.lstrip().startswith(('%', '!')))

def definitions(cell) -> list[str]:
    "Functions and classes a code cell defines at top level, and `Class.method` for their methods (private ones too)."
    try: tree = ast.parse(python_body(cell_source(cell)))
    except SyntaxError: return []
    names = []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.append(n.name)
        if isinstance(n, ast.ClassDef):
            names += [f'{n.name}.{m.name}' for m in n.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return names

def exported_names(nb) -> list[str]:
    "Public functions and classes of a notebook's exported cells, in order (each gets show_doc API docs on its page)."
    return [n for c in read_nb(nb)['cells'] if is_exported(c) for n in definitions(c)
            if '.' not in n and not n.startswith('_')]

# ---------------------------------------------------------------------------------------------------------------------
# the title block: `# Title`, then `> description` lines (one or more), then anything else
def title_block(nb) -> tuple[str, str, str]:
    """(title, description, rest) of a notebook's first markdown cell: the `# ` heading, the description made of all the
    consecutive `> ` lines after it (joined with newlines: markdown reads them as one paragraph), and the rest of the
    cell (text after the description, which belongs on the page). ('', '', '') if the cell has no `# ` heading."""
    cell = next((c for c in read_nb(nb)['cells'] if c.get('cell_type') == 'markdown'), None)
    lines = cell_source(cell).splitlines() if cell else []
    i = next((k for k, l in enumerate(lines) if re.match(r'^#\s+\S', l)), None)
    if i is None: return '', '', ''
    title, after = lines[i][1:].strip(), lines[i + 1:]
    while after and not after[0].strip(): after.pop(0)
    desc = []
    while after and after[0].startswith('>'): desc.append(after.pop(0)[1:].strip())
    return title, '\n'.join(d for d in desc if d), '\n'.join(lines[:i] + after).strip()

# ---------------------------------------------------------------------------------------------------------------------
# outputs
def png_outputs(nb) -> list[tuple[int, bytes]]:
    "(cell index, PNG bytes) of every PNG a notebook holds in its outputs, in order."
    return [(i, base64.b64decode(''.join(o['data']['image/png']) if isinstance(o['data']['image/png'], list)
                                 else o['data']['image/png']))
            for i, c in enumerate(read_nb(nb)['cells']) if c.get('cell_type') == 'code'
            for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]

def shown_images(nb) -> int:
    "Image outputs a page shows: all of them except those of cells marked `#| include: false` or `#| output: false`."
    n = 0
    for c in read_nb(nb)['cells']:
        if c.get('cell_type') != 'code': continue
        d = directives(cell_source(c))
        if d.get('include') is False or d.get('output') is False: continue
        n += sum(any(k.startswith('image/') for k in o.get('data', {})) for o in c.get('outputs', []))
    return n

def png_size(png: bytes) -> tuple[int, int]:
    "(width, height) in pixels from a PNG's header."
    if png[:8] != b'\x89PNG\r\n\x1a\n': raise ValueError('not a PNG')
    return int.from_bytes(png[16:20], 'big'), int.from_bytes(png[20:24], 'big')

def compact_png(png: bytes) -> bytes:
    """`png` re-encoded as an optimised 256-colour palette PNG (no dithering), or unchanged when that is not smaller.
    The book's figures are flat-coloured plots: a palette keeps them legible at about a quarter of the bytes, which is
    what keeps the notebooks (and every `make book` in git history) within tests/test_repo.py's size budget."""
    import io
    from PIL import Image
    im = Image.open(io.BytesIO(png)); im.load()
    rgb = im.convert('RGBA' if 'A' in im.getbands() or im.mode == 'P' else 'RGB')
    out = io.BytesIO()
    rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(out, format='PNG', optimize=True)
    return out.getvalue() if len(out.getvalue()) < len(png) else png

def compact_figures(nb: dict) -> int:
    "Re-encode every PNG output of notebook dict `nb` in place with `compact_png`; returns the bytes saved."
    saved = 0
    for c in nb['cells']:
        for o in c.get('outputs', []):
            data = o.get('data', {})
            if 'image/png' not in data: continue
            v = data['image/png']; png = base64.b64decode(''.join(v) if isinstance(v, list) else v)
            new = compact_png(png)
            if new is not png: data['image/png'] = base64.b64encode(new).decode(); saved += len(png) - len(new)
    return saved

def stderr_outputs(nb) -> list[str]:
    "What cells wrote to stderr (warnings included), as 'cell i: first line'."
    return [f"cell {i}: {''.join(o.get('text', '')).strip()[:300]}" for i, c in enumerate(read_nb(nb)['cells'])
            for o in c.get('outputs', []) if o.get('output_type') == 'stream' and o.get('name') == 'stderr']

def has_math(nb) -> bool:
    "Whether a notebook's markdown holds `$...$` or `$$...$$` math (outside code spans and fences)."
    for c in read_nb(nb)['cells']:
        if c.get('cell_type') != 'markdown': continue
        text = re.sub(r'```.*?```|`[^`\n]*`', '', cell_source(c), flags=re.S)
        if re.search(r'\$\$.+?\$\$|\$[^\s$][^$\n]*?\$', text, re.S): return True
    return False

def error_outputs(nb) -> list[str]:
    "Error outputs left in executed cells, e.g. a figure that failed to render (nbdev's runner does not raise for these)."
    errs = []
    for i, c in enumerate(read_nb(nb)['cells']):
        for o in c.get('outputs', []) if c.get('cell_type') == 'code' else []:
            if o.get('output_type') == 'error': errs.append(f"cell {i}: {o.get('ename')}: {o.get('evalue')}".strip())
            elif o.get('output_type') == 'stream':
                text = ''.join(o.get('text', ''))
                if 'Error in callback' in text or 'Traceback (most recent call last)' in text:
                    errs.append(f"cell {i}: {text.strip().splitlines()[0][:200]}")
    return errs

# ---------------------------------------------------------------------------------------------------------------------
# running a notebook
def skip_flags() -> list[str]:
    "Flags to skip: all of `slow cuda` except those listed in GEOBOOK_TEST_FLAGS (make test-all: `slow`, and `cuda` where a GPU is)."
    wanted = set(os.environ.get('GEOBOOK_TEST_FLAGS', '').split())
    return [f for f in ALL_FLAGS if f not in wanted]

def run_notebook(fn: Path, save: bool = False):
    """Execute notebook `fn` with nbdev's own runner (`nbdev.test.test_nb`, skipping `skip_flags()`; figures saved as
    plain 100-dpi PNG, not execnb's default 'retina'), keeping the executed notebook to look for error outputs and anything written to stderr. Returns (ok, seconds, errors); writes the outputs back to `fn` only when `save`
    and the run succeeded."""
    import nbdev.test as nbt, execnb.shell as es
    os.environ.setdefault('GEOBOOK_NO_PROGRESS', '1')   # progress bars would go to stderr outside JupyterLab
    kept = []
    real_write, real_init = nbt.write_nb, es.CaptureShell.__init__
    nbt.write_nb = lambda nb, path: kept.append(nb)
    # figures as the book style draws them (100 dpi): execnb's shell would save them 'retina', at twice the pixels
    # (four times the PNG), which JupyterLab does not do either
    es.CaptureShell.__init__ = lambda self, path=None, mpl_format='png', **kw: real_init(self, path, mpl_format=mpl_format, **kw)
    try: ok, secs = nbt.test_nb(fn, skip_flags=skip_flags(), save=True)
    finally: nbt.write_nb, es.CaptureShell.__init__ = real_write, real_init
    # a cell that writes to stderr (a warning, say) shows a pink box in JupyterLab: that is an error here too
    errors = (error_outputs(kept[0]) + [f'stderr output: {e}' for e in stderr_outputs(kept[0])]) if kept else []
    if ok and not errors and save: compact_figures(kept[0]); real_write(kept[0], fn)
    return ok and not errors, secs, errors

def run_isolated(fn: Path, save: bool = False, timeout: float | None = None):
    """`run_notebook` in a fresh Python process, as a reader's fresh kernel would: no state (matplotlib backends,
    numba or torch settings, imported modules) leaks from one chapter into the next. Returns (ok, seconds, errors);
    the child's output (tracebacks included) goes to this process's stdout/stderr."""
    import subprocess, sys
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
    import sys
    if '--compact' in sys.argv[2:]:          # re-encode the saved figures only, without running the notebook
        from fastcore.nbio import read_nb as _read, write_nb as _write
        nb = _read(sys.argv[1]); saved = compact_figures(nb); _write(nb, sys.argv[1])
        print(json.dumps({'compacted': sys.argv[1], 'bytes_saved': saved})); sys.exit(0)
    ok, secs, errors = run_notebook(Path(sys.argv[1]), save='--save' in sys.argv[2:])
    print(json.dumps({'ok': ok, 'seconds': secs, 'errors': errors}))
