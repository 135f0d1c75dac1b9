"""Render the book's website into `_docs/`.

With `quarto` on the PATH this is `nbdev-docs` (Quarto reads `nbs/_quarto.yml`). Without it — Quarto cannot be
installed on the book's machines — the same nbdev-processed notebooks are rendered with pandoc 3 (pypandoc-binary):

1. nbdev's own notebook processing (what `nbdev-proc-nbs` does, in-process, minus its attempt to download Quarto with
   sudo): `_proc/` gets copies of the notebooks with front matter (title, summary, output file name), `show_doc` cells
   added and executed for every exported function, `#| export`/`#| hide` directives applied; `nbs/sidebar.yml` gets
   the page order.
2. Each processed notebook gets the Quarto cell options that pandoc does not know (`echo`, `output`, `include`,
   `code-fold`, `output: asis`) applied and its links to sibling notebooks pointed at their pages.
3. pandoc (`-f ipynb`) writes standalone HTML with MathML math, highlighted code, a table of contents, the sidebar and
   the figures (extracted to `_docs/figures/`), through `tools/site/template.html`, `book.css` and `filter.lua`.

Run from anywhere with the project's Python: `python tools/build_site.py`. Prints each page and, last, the absolute
path of `_docs/index.html`. Also writes `_docs/pages.json` (the page list the browser test checks against).
"""
from __future__ import annotations
import html, json, os, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / 'tools' / 'site'
PAGE_SUFFIXES = ('.ipynb',)


def with_quarto() -> int:
    print('==> quarto found: rendering with nbdev-docs', flush=True)
    exe = Path(sys.executable).with_name('nbdev-docs')
    subprocess.run([str(exe) if exe.exists() else 'nbdev-docs'], cwd=ROOT, check=True)
    from nbdev.config import get_config
    cfg = get_config(ROOT)
    write_manifest(Path(cfg.doc_path), collect_pages(ROOT / '_proc', cfg), cfg)
    print((Path(cfg.doc_path) / 'index.html').resolve())
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# 1. nbdev's processing
def nbdev_process() -> tuple[Path, object]:
    "Run nbdev's docs pre-processing (as `nbdev-proc-nbs`) and return the `_proc` folder and the nbdev config."
    import nbdev.quarto as nq
    nq._ensure_quarto = lambda: None          # nbdev-proc-nbs would otherwise try `sudo` + curl to install Quarto
    os.chdir(ROOT)
    cache, cfg, _ = nq._pre_docs(n_workers=0)  # serial: no process pool start-up cost for a handful of notebooks
    return Path(cache), cfg


def page_order(cache: Path, cfg) -> list[Path]:
    "The processed notebooks in sidebar order (nbdev's sidebar.yml: index first, then by file name)."
    names = []
    sb = Path(cfg.nbs_path) / 'sidebar.yml'
    if sb.exists():
        import yaml
        def walk(items):
            for it in items or []:
                if isinstance(it, str): names.append(it)
                elif isinstance(it, dict):
                    if 'href' in it: names.append(it['href'])
                    walk(it.get('contents'))
        walk((yaml.safe_load(sb.read_text()) or {}).get('website', {}).get('sidebar', {}).get('contents'))
    pages = [cache / n for n in names if n.endswith(PAGE_SUFFIXES) and (cache / n).exists()]
    rest = sorted(p for p in cache.glob('*.ipynb') if p not in pages and not p.name.startswith(('_', '.')))
    pages += rest
    return sorted(pages, key=lambda p: (p.name != 'index.ipynb', pages.index(p)))


# ---------------------------------------------------------------------------------------------------------------------
# 2. Quarto cell options -> something pandoc renders
_OPT = re.compile(r'^\s*#\|\s?(.*)$')

def src(cell) -> str: return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']

def split_options(source: str) -> tuple[dict, str]:
    "Leading `#| key: value` lines (YAML) and the rest of the cell."
    import yaml
    lines, opts = source.splitlines(), []
    while lines and _OPT.match(lines[0]): opts.append(_OPT.match(lines.pop(0)).group(1))
    try: parsed = yaml.safe_load('\n'.join(opts)) if opts else {}
    except yaml.YAMLError: parsed = {}
    return (parsed if isinstance(parsed, dict) else {}), '\n'.join(lines)

def front_matter(nb) -> dict:
    import yaml
    for c in nb['cells']:
        if c['cell_type'] == 'raw' and src(c).lstrip().startswith('---'):
            body = src(c).strip().strip('-')
            nb['cells'].remove(c)
            return yaml.safe_load(body) or {}
    return {}

def rewrite_links(md: str, links: dict[str, str]) -> str:
    "`01_ntk.ipynb#x` (markdown or HTML link) -> the page nbdev gives that notebook."
    def sub(m):
        from nbdev.config import nbpath2html
        name = Path(m.group(2)).name + '.ipynb'
        return m.group(1) + links.get(name, nbpath2html(name).name) + (m.group(3) or '')
    return re.sub(r'(\]\(\s*<?|href=["\'])((?:\./)?[\w.-]+?)\.ipynb(#[^)"\'\s>]*)?', sub, md)

def _text(v) -> str: return ''.join(v) if isinstance(v, list) else v

def _displayable(o: dict) -> dict:
    "nbdev-clean leaves results with `execution_count: null`, which pandoc's ipynb reader rejects: show them as displays."
    if o.get('output_type') == 'execute_result' and o.get('execution_count') is None:
        return {k: v for k, v in o.items() if k != 'execution_count'} | {'output_type': 'display_data'}
    return o

def apply_cell_options(nb, links: dict[str, str]) -> None:
    "What Quarto does with cell options, done on the notebook JSON so that pandoc's ipynb reader sees the result."
    cells = []
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            if src(c).strip() == '<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->': continue
            c['source'] = rewrite_links(src(c), links); cells.append(c); continue
        if c['cell_type'] != 'code': cells.append(c); continue
        opts, body = split_options(src(c))
        if opts.get('include') is False: continue
        outs = [] if opts.get('output') is False else [_displayable(o) for o in c.get('outputs', [])]
        echo = opts.get('echo', True) is not False and body.strip() != ''
        asis = opts.get('output') == 'asis'
        md_outs = []
        if asis or any('text/markdown' in o.get('data', {}) for o in outs):
            # show_doc results (and any output: asis cell): their markdown becomes page content
            keep = []
            for o in outs:
                d = o.get('data', {})
                if 'text/markdown' in d: md_outs.append(_text(d['text/markdown']))
                elif asis and 'text/html' in d: md_outs.append(_text(d['text/html']))
                elif asis and o.get('output_type') == 'stream': md_outs.append(_text(o.get('text', '')))
                else: keep.append(o)
            outs = keep
        is_doc = bool(md_outs) and re.match(r'\s*(nbdev\.)?(showdoc\.)?show_doc\(', body or '') is not None
        if echo or outs:
            c = dict(c, source=body if echo else '', outputs=outs)
            md = dict(c.get('metadata', {}))
            if opts.get('code-fold') in (True, 'true', 'show') and echo:
                md['code-fold'] = 'show' if opts['code-fold'] == 'show' else 'true'
                md['code-summary'] = str(opts.get('code-summary', 'Code'))
            c['metadata'] = md
            cells.append(c)
        for m in md_outs:
            cls = 'api-doc' if is_doc else 'asis-output'
            cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': f'<div class="{cls}">\n\n{m}\n\n</div>'})
    nb['cells'] = cells


# ---------------------------------------------------------------------------------------------------------------------
# 3. pandoc
def pandoc_exe() -> str:
    import pypandoc
    return pypandoc.get_pandoc_path()

def sidebar_html(pages: list[dict], current: str) -> str:
    items = []
    for p in pages:
        cls = ' class="current" aria-current="page"' if p['href'] == current else ''
        num = f'<span class="num">{html.escape(p["num"])}</span>' if p['num'] else ''
        items.append(f'<li><a href="{p["href"]}"{cls}>{num}<span class="label">{html.escape(p["label"])}</span></a></li>')
    return '<ul>\n' + '\n'.join(items) + '\n</ul>'

def pager_html(pages: list[dict], i: int) -> str:
    out = []
    if i > 0: out.append(f'<a class="prev" href="{pages[i-1]["href"]}"><small>previous</small>{html.escape(pages[i-1]["label"])}</a>')
    else: out.append('<span></span>')
    if i + 1 < len(pages): out.append(f'<a class="next" href="{pages[i+1]["href"]}"><small>next</small>{html.escape(pages[i+1]["label"])}</a>')
    return '\n'.join(out)

def plain(md: str) -> str:
    "Markdown of a title or summary as plain text (for <title> and <meta>)."
    return re.sub(r'[*_`]|\$', '', md)

def inline_toc(path: Path) -> None:
    "Copy the page's table of contents (the aside) into the collapsible one that narrow screens show under the title."
    text = path.read_text()
    m = re.search(r'<aside class="toc"[^>]*>.*?(<ul>.*</ul>)\s*</aside>', text, re.S)
    toc = re.sub(r' id="toc-[^"]*"', '', m.group(1)) if m else ''
    block = f'<details class="toc-inline"><summary>Contents</summary>\n{toc}\n</details>' if toc else ''
    path.write_text(text.replace('<!--toc-inline-->', block, 1))

def render(page: dict, pages: list[dict], i: int, docs: Path, tmp: Path, book_title: str) -> float:
    t0 = time.time()
    nb_path = tmp / page['source']
    nb_path.write_text(json.dumps(page['nb']))
    meta = tmp / (page['source'] + '.yml')     # title and summary as markdown (math, emphasis), like Quarto does
    meta.write_text(json.dumps({'title': page['title'], 'description': page['description']}, ensure_ascii=False))
    stem = Path(page['href']).stem
    args = [pandoc_exe(), str(nb_path),
            '-f', 'ipynb+markdown_in_html_blocks+link_attributes+fenced_code_attributes+footnotes+fenced_divs'
                  '+bracketed_spans+definition_lists+implicit_figures',
            '-t', 'html5', '--standalone', '--mathml', '--toc', '--toc-depth=3',
            '--syntax-highlighting=pygments', '--wrap=none',
            f'--template={SITE / "template.html"}', f'--lua-filter={SITE / "filter.lua"}',
            f'--extract-media=figures/{stem}', f'--resource-path={page["dir"]}',
            f'--metadata-file={meta}', '-M', f'pagetitle={plain(page["title"])} – {book_title}', '-M', 'lang=en',
            '-V', f'meta-description={html.escape(plain(page["description"]))}',
            '-V', f'book-title={html.escape(book_title)}',
            '-V', f'sidebar={sidebar_html(pages, page["href"])}',
            '-V', f'pager={pager_html(pages, i)}',
            '-o', page['href']]
    if page['href'] == 'index.html': args += ['-V', 'front-page=true']
    r = subprocess.run(args, cwd=docs, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'pandoc failed on {page["source"]}:\n{r.stderr}')
    inline_toc(docs / page['href'])
    warn = [l for l in r.stderr.splitlines() if l.strip()]
    if warn: print(f'    pandoc on {page["source"]}: ' + '\n    '.join(warn[:5]), flush=True)
    return time.time() - t0


# ---------------------------------------------------------------------------------------------------------------------
# 4. The figure gallery and the front page's chapter cards, both made from the chapters' saved figures
FIGURE_DIR = 'gallery'

def _heading_text(md: str) -> str | None:
    "Text of the last markdown heading in a cell (without `#`s, emphasis or math dollars), if any."
    hs = re.findall(r'^#{1,4}\s+(.+?)\s*$', md, re.M)
    return plain(hs[-1]).strip() if hs else None

def collect_figures(pages: list[dict], docs: Path) -> dict[str, list[dict]]:
    """Every figure (PNG output) of every chapter, in order: written to `_docs/gallery/<page>-<k>.png`, anchored in its
    chapter by an `<a id="fig-<page>-<k>">` placed just before the cell that draws it; returns {page href: figures}."""
    import base64
    out_dir = docs / FIGURE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for page in pages:
        if page['href'] == 'index.html': continue
        stem, section, cells, figs = Path(page['href']).stem, page['title'], [], []
        for c in page['nb']['cells']:
            if c['cell_type'] == 'markdown': section = _heading_text(src(c)) or section
            pngs = [o['data']['image/png'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
            if c['cell_type'] == 'code' and pngs:
                anchor = f'fig-{stem}-{len(figs) + 1}'
                cells.append({'cell_type': 'markdown', 'metadata': {}, 'source': f'<a id="{anchor}"></a>'})
                for png in pngs:
                    k = len(figs) + 1
                    name = f'{stem}-{k}.png'
                    (out_dir / name).write_bytes(base64.b64decode(_text(png)))
                    figs.append(dict(file=f'{FIGURE_DIR}/{name}', anchor=anchor, section=section, href=page['href'],
                                     chapter=page['title'], num=page['num']))
            cells.append(c)
        page['nb']['cells'] = cells
        figures[page['href']] = figs
    return figures

def _card(fig: dict, caption: str) -> str:
    return (f'<figure class="card"><a href="{fig["href"]}#{fig["anchor"]}"><img src="{fig["file"]}" '
            f'alt="{html.escape(fig["section"])} ({html.escape(fig["chapter"])})"></a>'
            f'<figcaption>{caption}</figcaption></figure>')

def gallery_page(pages: list[dict], figures: dict[str, list[dict]], cache: Path) -> dict:
    "A generated page listing every figure of the book, each linking back to where its chapter draws it."
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source':
              'Every figure of the book, chapter by chapter. Each one links back to the cell that draws it; every '
              'figure is regenerated whenever its chapter runs.'}]
    for page in pages:
        figs = figures.get(page['href'])
        if not figs: continue
        grid = '\n'.join(_card(f, html.escape(f['section'])) for f in figs)
        cells.append({'cell_type': 'markdown', 'metadata': {}, 'source':
                      f'## {page["num"]}. {page["title"]}\n\n<div class="gallery">\n{grid}\n</div>'})
    nb = {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    return dict(source='gallery', dir=str(cache), href='gallery.html', nb=nb, title='Gallery of figures',
                description='Every figure of the book, linked to the chapter that draws it.', num='', label='Gallery',
                generated=True)

def representative(figs: list[dict]) -> dict | None:
    "A chapter's cover figure: its first figure under an 'Experiments' heading, else its first figure."
    return next((f for f in figs if 'experiment' in f['section'].lower()), figs[0] if figs else None)

def chapter_cards(pages: list[dict], figures: dict[str, list[dict]]) -> str:
    """The front page's chapter map: per chapter its title, one-sentence summary (markdown: math is typeset) and
    representative figure, as pandoc fenced divs."""
    cards = []
    for page in pages:
        if page['href'] == 'index.html' or page.get('generated'): continue
        fig = representative(figures.get(page['href'], []))
        img = f'[![a figure of chapter {page["num"]}]({fig["file"]})]({page["href"]})\n\n' if fig else ''
        cards.append(f'::: {{.card .chapter-card}}\n{img}[**{page["num"]}. {page["title"]}**]({page["href"]})\n\n'
                     f'{page["description"]}\n\n:::')
    return '::: {.gallery .chapter-map}\n' + '\n\n'.join(cards) + '\n:::'

def insert_chapter_cards(index: dict, cards: str) -> None:
    "Put the chapter cards where the front page says `<!-- chapter-figures -->` (or after its first section)."
    for c in index['nb']['cells']:
        if c['cell_type'] == 'markdown' and '<!-- chapter-figures -->' in src(c):
            c['source'] = src(c).replace('<!-- chapter-figures -->', cards); return
    index['nb']['cells'].insert(1, {'cell_type': 'markdown', 'metadata': {}, 'source': cards})


def main() -> int:
    if shutil.which('quarto'): return with_quarto()
    t0 = time.time()
    print('==> quarto not on PATH: rendering the nbdev-processed notebooks with pandoc', flush=True)
    try: cache, cfg = nbdev_process()
    except Exception as e:
        msg = str(e).strip().splitlines()
        print(f'==> nbdev could not process the notebooks: {msg[0] if msg else e!r}', file=sys.stderr)
        if len(msg) > 1: print('\n'.join('    ' + l for l in msg[1:40]), file=sys.stderr)
        print('    (nbdev executes, while processing, every cell that contains an import, to render show_doc: keep '
              'imports in cells of their own, which must not need earlier state)', file=sys.stderr)
        return 1
    print(f'    nbdev processing (_proc/) in {time.time() - t0:.1f} s', flush=True)
    docs = Path(cfg.doc_path)
    book_title = str(cfg.get('title', cfg.get('lib_name', 'geobook')))
    pages = collect_pages(cache, cfg)
    links = {p['source']: p['href'] for p in pages}
    for p in pages: apply_cell_options(p['nb'], links)

    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    figures = collect_figures(pages, docs)
    if pages and pages[0]['href'] == 'index.html': insert_chapter_cards(pages[0], chapter_cards(pages, figures))
    pages.append(gallery_page(pages, figures, cache))
    for f in ('book.css',): shutil.copy2(SITE / f, docs / f)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2))) as ex:
        futs = [ex.submit(render, p, pages, i, docs, Path(tmp), book_title) for i, p in enumerate(pages)]
        for p, f in zip(pages, futs):
            secs = f.result()
            print(f'    {p["source"]:<32} -> _docs/{p["href"]:<24} {secs:5.1f} s', flush=True)
    write_manifest(docs, pages, cfg)
    print(f'==> {len(pages)} pages in {time.time() - t0:.1f} s', flush=True)
    print((docs / 'index.html').resolve())
    return 0


def collect_pages(cache: Path, cfg) -> list[dict]:
    "Every page in sidebar order: its notebook (processed), output file, title and summary from nbdev's front matter."
    pages = []
    for p in page_order(cache, cfg):
        nb = json.loads(p.read_text())
        fm = front_matter(nb)
        href = fm.get('output-file') or p.with_suffix('.html').name
        m = re.match(r'^(\d+)_', p.name)
        title = str(fm.get('title') or p.stem)
        pages.append(dict(source=p.name, dir=str(p.parent), href=href, nb=nb, title=title,
                          description=str(fm.get('description') or ''),
                          num=str(int(m.group(1))) if m else '', label=title if p.name != 'index.ipynb' else 'Preface'))
    return pages

def write_manifest(docs: Path, pages: list[dict], cfg) -> None:
    "_docs/pages.json: the pages in order, for tests/test_site.py."
    manifest = [{k: p[k] for k in ('source', 'href', 'title')}
                | ({'generated': True} if p.get('generated') else {'exports': exported_names(cfg, p['source'])})
                for p in pages]
    (docs / 'pages.json').write_text(json.dumps(manifest, indent=1))
    (docs / '.nojekyll').touch()


def exported_names(cfg, source: str) -> list[str]:
    "Public functions/classes a notebook exports (show_doc is expected for each)."
    import ast
    nb = json.loads((Path(cfg.nbs_path) / source).read_text())
    names = []
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        s = src(c)
        if not re.search(r'^\s*#\|\s*export\s*$', s, re.M): continue
        try: tree = ast.parse('\n'.join(l for l in s.splitlines() if not l.lstrip().startswith('%')))
        except SyntaxError: continue
        names += [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and not n.name.startswith('_')]
    return names


if __name__ == '__main__':
    rc = main()
    sys.stdout.flush(); sys.stderr.flush()
    # nbdev's processing leaves IPython shells behind whose exit handlers take seconds (10+ s on a loaded machine);
    # everything is written by now, so leave without them
    os._exit(rc)
