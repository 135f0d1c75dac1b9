"""Render the book's website into `_docs/`: one page per notebook, a gallery of every figure, a full-text search index.

The same nbdev-processed notebooks that Quarto would render (`nbdev-docs`) are rendered with pandoc 3, which PyPI
ships as a wheel (pypandoc-binary), so the site builds anywhere `make book` runs and is the one the tests check.
(There is no second renderer: `nbdev-docs` needs Quarto, which PyPI cannot install without a download from GitHub,
and made a different site — no gallery, no chapter cards, no search index — that nothing here could test.)

1. nbdev's own notebook processing (what `nbdev-proc-nbs` does, in-process, minus its attempt to download Quarto with
   sudo): `_proc/` gets copies of the notebooks with `show_doc` cells added and executed for every exported function,
   `#| export`/`#| hide` directives applied and backticked names linked to their API docs; `nbs/sidebar.yml` gets the
   page order. The title block (`# title`, `> description` lines, the paragraph after them) is read from the notebook
   itself: nbdev keeps only the first `>` line and drops the rest of the cell.
2. Each processed notebook gets the Quarto cell options that pandoc does not know (`echo`, `output`, `include`,
   `code-fold`, `output: asis`) applied, its links to sibling notebooks and to the book's public URL made relative, and
   an anchor for every function it defines that has no API block (nbdev links private helpers and methods too).
3. pandoc (`-f ipynb`) writes standalone HTML with MathML math, highlighted code, a table of contents, the sidebar and
   the figures (extracted to `_docs/figures/`), through `tools/site/template.html`, `book.css`, `site.js` and
   `filter.lua`; and a Markdown twin of every page, `<page>.html.md`, the page the `Docs:` line of each module
   docstring and `nbs/llms.txt` link to (nbdev 3 writes those links for every module).
4. Headings get permalinks; Pagefind (`pagefind[bin]`) indexes every page into `_docs/pagefind/`, which the search box
   queries in the browser, with no network.

Run from anywhere with the project's Python: `python tools/build_site.py`. Prints each page and, last, the absolute
path of `_docs/index.html`. Also writes `_docs/pages.json` (the page list the browser test checks against). It reads
the notebooks and never writes them. Search needs the pages served over HTTP (`python -m http.server -d _docs`); the
rest of the site also works from `file://`.
"""
from __future__ import annotations
import html, json, os, re, shutil, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / 'tools' / 'site'
sys.path.insert(0, str(ROOT / 'tools'))
from notebooks import NBS, cell_source as src, definitions, directives, exported_names, split_directives, title_block

STATIC = ('book.css', 'site.js')
PAGEFIND_EXTRA_CHARS = '_'      # `nngp_ntk` is one searchable word


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
    pages = [cache / n for n in names if n.endswith('.ipynb') and (cache / n).exists()]
    pages += sorted(p for p in cache.glob('*.ipynb') if p not in pages and not p.name.startswith(('_', '.')))
    return sorted(pages, key=lambda p: (p.name != 'index.ipynb', pages.index(p)))


def pop_front_matter(nb) -> dict:
    "Remove nbdev's front-matter cell (a raw `---` block) from a processed notebook and return it as a dict."
    import yaml
    for c in nb['cells']:
        if c['cell_type'] == 'raw' and src(c).lstrip().startswith('---'):
            nb['cells'].remove(c)
            return yaml.safe_load(src(c).strip().strip('-')) or {}
    return {}


def md_cell(text: str) -> dict: return {'cell_type': 'markdown', 'metadata': {}, 'source': text}


def collect_pages(cache: Path, cfg) -> list[dict]:
    """Every page in sidebar order: its processed notebook, output file, number, and the title block read from the
    notebook itself (title, the whole `>` description, and the rest of the title cell put back at the top)."""
    pages = []
    for p in page_order(cache, cfg):
        nb = json.loads(p.read_text())
        fm = pop_front_matter(nb)
        title, description, rest = title_block(NBS / p.name) if (NBS / p.name).exists() else ('', '', '')
        if rest: nb['cells'].insert(0, md_cell(rest))
        href = fm.get('output-file') or p.with_suffix('.html').name
        m = re.match(r'^(\d+)_', p.name)
        title = title or str(fm.get('title') or p.stem)
        pages.append(dict(source=p.name, dir=str(p.parent), href=href, nb=nb, title=title,
                          description=description or str(fm.get('description') or ''),
                          num=str(int(m.group(1))) if m else '', label=title if p.name != 'index.ipynb' else 'Preface'))
    return pages


# ---------------------------------------------------------------------------------------------------------------------
# 2. Quarto cell options -> something pandoc renders; links made relative; anchors for definitions
def site_url(cfg) -> str:
    "The book's public URL (pyproject's Documentation URL), with a trailing slash: links to it are made relative."
    if not cfg.doc_host: return ''
    path = str(cfg.doc_baseurl or '').strip('/')
    return str(cfg.doc_host).rstrip('/') + '/' + (path + '/' if path else '')

def relative_links(text: str, base: str) -> str:
    "Links to the book's own public pages (`https://host/geobook/ntk.html#x`) as relative links (`ntk.html#x`)."
    if not base: return text
    text = re.sub(r'(?<=["\'(<])' + re.escape(base) + r'(?=[#"\')>])', 'index.html', text)   # the site's root
    return text.replace(base, '')

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

def _doc_heading(md: str) -> str | None:
    "The name a show_doc block documents: the text of its first heading (`### nngp_ntk` -> 'nngp_ntk')."
    m = re.search(r'^#{2,4}\s+(.+?)\s*$', md, re.M)
    if not m: return None
    name = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(1)).strip('`* ')
    return name if re.fullmatch(r'[\w.]+', name) else None

def apply_cell_options(nb, links: dict[str, str], base: str) -> None:
    """What Quarto does with cell options, done on the notebook JSON so that pandoc's ipynb reader sees the result; links
    made relative; before each code cell that defines a function or class without an API block on the page, an anchor
    named like nbdev's links to it (`#_load_rows`, `#mlp.param_scales`), so that those links land on its code. Code
    cells marked `#| appendix: true` (plumbing that must run first but is not what a reader came for) are moved to the
    end of the page, under a heading "How this page is made"."""
    cells, documented, defined, appendix = [], set(), [], set()
    for c in nb['cells']:
        start = len(cells)
        if c['cell_type'] == 'code' and directives(src(c)).get('appendix') is True:
            _add_cell(c, cells, documented, defined, links, base)
            appendix.update(range(start, len(cells))); continue
        _add_cell(c, cells, documented, defined, links, base)
    for i, name in defined:
        if name.lower() in documented: continue
        anchor = f'<div id="{html.escape(name.lower())}" class="def-anchor"></div>'
        cells[i] = md_cell(anchor) if cells[i] is None else md_cell(src(cells[i]) + '\n' + anchor)
    tail = [c for i, c in enumerate(cells) if i in appendix and c is not None]
    nb['cells'] = ([c for i, c in enumerate(cells) if i not in appendix and c is not None]
                   + ([md_cell('## How this page is made')] + tail if tail else []))

def _add_cell(c, cells, documented, defined, links, base):
    "One notebook cell as page cells (appended to `cells`), the options applied (see apply_cell_options)."
    if c['cell_type'] == 'markdown':
        if src(c).strip() == '<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->': return
        text = split_directives(src(c))[1]     # `#| export` puts a cell into the package docstring: not page text
        c['source'] = relative_links(rewrite_links(text, links), base); cells.append(c); return
    if c['cell_type'] != 'code': cells.append(c); return
    opts, body = directives(src(c)), split_directives(src(c))[1]
    if opts.get('include') is False: return
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
    if echo:
        names = [n for n in definitions(c) if n.lower() not in {x.lower() for _, x in defined}]
        if names:
            defined += [(len(cells), n) for n in names]
            cells.append(None)             # placeholder: the anchors go here once the API blocks are known
    if echo or outs:
        c = dict(c, source=body if echo else '', outputs=outs)
        md = dict(c.get('metadata', {}))
        if opts.get('code-fold') in (True, 'true', 'show') and echo:
            md['code-fold'] = 'show' if opts['code-fold'] == 'show' else 'true'
            md['code-summary'] = str(opts.get('code-summary', 'Code'))
        c['metadata'] = md
        cells.append(c)
    for m in md_outs:
        if is_doc and (name := _doc_heading(m)):
            # the id nbdev's links use (`ntk.html#mlp.param_scales`); pandoc's own would drop the dot
            # (a class and a function whose names differ only in case share nbdev's anchor: the second gets `-1`)
            hid, k = name.lower(), 0
            while hid in documented: k += 1; hid = f'{name.lower()}-{k}'
            documented.add(hid)
            m = re.sub(r'^(#{2,4}\s+.+?)\s*$', lambda h: f'{h.group(1)} {{#{hid}}}', m, count=1, flags=re.M)
        cls = 'api-doc' if is_doc else 'asis-output'
        cells.append(md_cell(f'<div class="{cls}">\n\n{relative_links(rewrite_links(m, links), base)}\n\n</div>'))


# ---------------------------------------------------------------------------------------------------------------------
# 3. pandoc
def pandoc_exe() -> str:
    import pypandoc
    return pypandoc.get_pandoc_path()

def plain_texts(mds: list[str]) -> list[str]:
    """Markdown snippets (titles, summaries, captions) as plain text for <title>, <meta> and alt text: pandoc writes math
    in Unicode (`$n^{-1/2}$` -> n^(−1/2)), code without backticks (`nngp_ntk` keeps its underscore)."""
    if not mds: return []
    sep = 'GEOBOOKSEPARATOR'
    doc = f'\n\n{sep}\n\n'.join(m.replace('\n', ' ') for m in mds)
    r = subprocess.run([pandoc_exe(), '-f', 'markdown', '-t', 'plain', '--wrap=none'], input=doc, capture_output=True,
                       text=True, check=True)
    parts = [re.sub(r'\s+', ' ', p).strip() for p in r.stdout.split(sep)]
    assert len(parts) == len(mds), (len(parts), len(mds))
    return parts

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

def source_html(page: dict, cfg) -> str:
    "A chapter's notebook on the repository, and how to run it."
    if page.get('generated') or not cfg.git_url: return ''
    url = f"{str(cfg.git_url).rstrip('/')}/blob/{cfg.branch}/{Path(cfg.nbs_path).name}/{page['source']}"
    return (f'<p class="page-source">Source: <a href="{html.escape(url)}">{Path(cfg.nbs_path).name}/{page["source"]}</a>'
            f' · run it in JupyterLab with <code>make lab</code></p>')

def postprocess(path: Path, base: str) -> None:
    """After pandoc: the page's table of contents copied into the collapsible one narrow screens show, a permalink on
    every section heading, figures linked to their full-size image, and any link to the book's public URL made
    relative."""
    text = path.read_text()
    m = re.search(r'<aside class="toc"[^>]*>.*?(<ul>.*</ul>)\s*</aside>', text, re.S)
    toc = re.sub(r' id="toc-[^"]*"', '', m.group(1)) if m else ''
    block = f'<details class="toc-inline" data-pagefind-ignore><summary>Contents</summary>\n{toc}\n</details>' if toc else ''
    text = text.replace('<!--toc-inline-->', block, 1)
    text = re.sub(r'(<h([2-4])\b[^>]*?\bid="([^"]+)"[^>]*>)(.*?)</h\2>',
                  lambda m: f'{m.group(1)}{m.group(4)}<a class="heading-anchor" href="#{m.group(3)}" '
                            f'aria-label="Link to this section" data-pagefind-ignore>#</a></h{m.group(2)}>', text, flags=re.S)
    # figures: a link to the image itself, to see it at full size (the column shows it scaled to fit)
    text = re.sub(r'(?<!>)(<img src="(figures/[^"]+)"[^>]*>)',
                  r'<a class="figure-link" href="\2" title="Open the figure at full size">\1</a>', text)
    path.write_text(relative_links(text, base))

PANDOC_FROM = ('ipynb+header_attributes+markdown_in_html_blocks+link_attributes+fenced_code_attributes+footnotes+fenced_divs'
               '+bracketed_spans+definition_lists+implicit_figures')

def render(page: dict, pages: list[dict], i: int, docs: Path, tmp: Path, cfg) -> float:
    t0 = time.time()
    nb_path = tmp / page['source']
    nb_path.write_text(json.dumps(page['nb']))
    meta = tmp / (page['source'] + '.yml')     # title and summary as markdown (math, emphasis), like Quarto does
    meta.write_text(json.dumps({'title': page['title'], 'description': page['description']}, ensure_ascii=False))
    stem = Path(page['href']).stem
    common = [pandoc_exe(), str(nb_path), '-f', PANDOC_FROM, f'--extract-media=figures/{stem}',
              f'--resource-path={page["dir"]}', f'--metadata-file={meta}', '--wrap=none']
    args = common + [
            '-t', 'html5', '--standalone', '--mathml', '--toc', '--toc-depth=3', '--syntax-highlighting=pygments',
            f'--template={SITE / "template.html"}', f'--lua-filter={SITE / "filter.lua"}',
            '-M', f'pagetitle={page["plain_title"]} – {cfg.title}', '-M', 'lang=en',
            '-V', f'meta-description={html.escape(page["plain_description"])}',
            '-V', f'book-title={html.escape(str(cfg.title))}',
            '-V', f'sidebar={sidebar_html(pages, page["href"])}',
            '-V', f'pager={pager_html(pages, i)}',
            '-V', f'source={source_html(page, cfg)}',
            '-o', page['href']]
    if page['href'] == 'index.html': args += ['-V', 'front-page=true']
    if not page.get('generated'): args += ['-V', 'searchable=true']     # the gallery only repeats chapter headings
    r = subprocess.run(args, cwd=docs, capture_output=True, text=True)
    if r.returncode: raise RuntimeError(f'pandoc failed on {page["source"]}:\n{r.stderr}')
    postprocess(docs / page['href'], site_url(cfg))
    warn = [l for l in r.stderr.splitlines() if l.strip()]
    if warn: print(f'    pandoc on {page["source"]}: ' + '\n    '.join(warn[:5]), flush=True)
    # the Markdown twin (`<page>.html.md`), for the `Docs:` links of the module docstrings and llms.txt
    md = subprocess.run(common + ['-t', 'gfm+tex_math_dollars', '--standalone', '--template', str(SITE / 'page.md'),
                                  '--lua-filter', str(SITE / 'filter.lua'), '--lua-filter', str(SITE / 'markdown.lua'),
                                  '-o', page['href'] + '.md'],
                        cwd=docs, capture_output=True, text=True)
    if md.returncode: raise RuntimeError(f'pandoc (markdown) failed on {page["source"]}:\n{md.stderr}')
    md_path = docs / (page['href'] + '.md')
    md_path.write_text(relative_links(md_path.read_text(), site_url(cfg)))
    return time.time() - t0


# ---------------------------------------------------------------------------------------------------------------------
# 4. The figure gallery and the front page's chapter cards, both made from the chapters' saved figures
FIGURE_DIR = 'gallery'

def _heading_md(md: str) -> str | None:
    "Markdown of the last heading in a cell (without `#`s or a trailing `{#id}`), if any: math and code kept."
    hs = re.findall(r'^#{1,4}\s+(.+?)\s*$', md, re.M)
    return re.sub(r'\s*\{[^}]*\}\s*$', '', hs[-1]).strip() if hs else None

def collect_figures(pages: list[dict], docs: Path) -> dict[str, list[dict]]:
    """Every figure (PNG output) of every chapter, in order: written to `_docs/gallery/<page>-<k>.png`, anchored in its
    chapter by an element `id="fig-<page>-<k>"` placed just before the cell that draws it; returns {page href: figures}."""
    import base64
    out_dir = docs / FIGURE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for page in pages:
        if page['href'] == 'index.html': continue
        stem, section, cells, figs = Path(page['href']).stem, page['title'], [], []
        for c in page['nb']['cells']:
            if c['cell_type'] == 'markdown': section = _heading_md(src(c)) or section
            pngs = [o['data']['image/png'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
            if c['cell_type'] == 'code' and pngs:
                anchor = f'fig-{stem}-{len(figs) + 1}'
                cells.append(md_cell(f'<div id="{anchor}" class="fig-anchor"></div>'))
                for png in pngs:
                    name = f'{stem}-{len(figs) + 1}.png'
                    (out_dir / name).write_bytes(base64.b64decode(_text(png)))
                    figs.append(dict(file=f'{FIGURE_DIR}/{name}', anchor=anchor, section=section, href=page['href'],
                                     chapter=page['title'], num=page['num']))
            cells.append(c)
        page['nb']['cells'] = cells
        figures[page['href']] = figs
    return figures

def _card(fig: dict) -> str:
    "A gallery card as pandoc markdown: the figure, linked to where its chapter draws it, and its section as caption."
    alt = fig['alt'].replace('[', '(').replace(']', ')')
    return (f'::: {{.card}}\n[![{alt}]({fig["file"]})]({fig["href"]}#{fig["anchor"]})\n\n'
            f'{fig["section"]}\n\n:::')

def gallery_page(pages: list[dict], figures: dict[str, list[dict]], cache: Path) -> dict:
    "A generated page listing every figure of the book, each linking back to where its chapter draws it."
    cells = [md_cell('Every figure of the book, chapter by chapter. Each one links back to the cell that draws it; every '
                     'figure is regenerated whenever its chapter runs.')]
    for page in pages:
        figs = figures.get(page['href'])
        if not figs: continue
        grid = '\n\n'.join(_card(f) for f in figs)
        cells.append(md_cell(f'## {page["num"]}. {page["title"]}\n\n:::: {{.gallery}}\n{grid}\n::::'))
    nb = {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
    return dict(source='gallery', dir=str(cache), href='gallery.html', nb=nb, title='Gallery of figures',
                description='Every figure of the book, linked to the chapter that draws it.', num='', label='Gallery',
                generated=True)

def representative(figs: list[dict]) -> dict | None:
    "A chapter's cover figure: its first figure under an 'Experiments' heading, else its first figure."
    return next((f for f in figs if 'experiment' in f['section'].lower()), figs[0] if figs else None)

def chapter_cards(pages: list[dict], figures: dict[str, list[dict]]) -> str:
    """The front page's chapter map: per chapter its title, summary (markdown: math is typeset) and representative
    figure, as pandoc fenced divs."""
    cards = []
    for page in pages:
        if page['href'] == 'index.html' or page.get('generated'): continue
        fig = representative(figures.get(page['href'], []))
        img = f'[![a figure of chapter {page["num"]}]({fig["file"]})]({page["href"]})\n\n' if fig else ''
        cards.append(f'::: {{.card .chapter-card}}\n{img}[**{page["num"]}. {page["title"]}**]({page["href"]})\n\n'
                     f'{page["description"]}\n\n:::')
    return ':::: {.gallery .chapter-map}\n' + '\n\n'.join(cards) + '\n::::'

def insert_chapter_cards(index: dict, cards: str) -> None:
    "Put the chapter cards where the front page says `<!-- chapter-figures -->` (or after its first section)."
    for c in index['nb']['cells']:
        if c['cell_type'] == 'markdown' and '<!-- chapter-figures -->' in src(c):
            c['source'] = src(c).replace('<!-- chapter-figures -->', cards); return
    index['nb']['cells'].insert(1, md_cell(cards))


# ---------------------------------------------------------------------------------------------------------------------
# 5. search
def pagefind_exe() -> list[str]:
    "Pagefind's CLI from the `pagefind[bin]` wheel."
    return [sys.executable, '-m', 'pagefind']

def build_search_index(docs: Path) -> None:
    "Index every page's main text (`data-pagefind-body`) into `_docs/pagefind/`."
    # MathML carries its TeX source in <annotation>: index what is shown, not the source
    r = subprocess.run(pagefind_exe() + ['--site', str(docs), '--include-characters', PAGEFIND_EXTRA_CHARS,
                                         '--exclude-selectors', 'annotation', '--quiet'],
                       capture_output=True, text=True)
    if r.returncode or not (docs / 'pagefind' / 'pagefind-ui.js').exists():
        raise RuntimeError(f'pagefind failed ({r.returncode}):\n{r.stdout}\n{r.stderr}')


# ---------------------------------------------------------------------------------------------------------------------
def main() -> int:
    t0 = time.time()
    print('==> rendering the nbdev-processed notebooks with pandoc', flush=True)
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
    pages = collect_pages(cache, cfg)
    links, base = {p['source']: p['href'] for p in pages}, site_url(cfg)
    for p in pages: apply_cell_options(p['nb'], links, base)

    if docs.exists(): shutil.rmtree(docs)
    docs.mkdir(parents=True)
    figures = collect_figures(pages, docs)
    if pages and pages[0]['href'] == 'index.html': insert_chapter_cards(pages[0], chapter_cards(pages, figures))
    figs = [f for fs in figures.values() for f in fs]
    plain = plain_texts([p['title'] for p in pages] + [p['description'] for p in pages] + [f['section'] for f in figs])
    for k, p in enumerate(pages): p['plain_title'], p['plain_description'] = plain[k], plain[len(pages) + k]
    for f, text in zip(figs, plain[2 * len(pages):]): f['alt'] = f'{text} (chapter {f["num"]}, {f["chapter"]})'
    gallery = gallery_page(pages, figures, cache)
    pages.append(gallery | {'plain_title': gallery['title'], 'plain_description': gallery['description']})
    for f in STATIC: shutil.copy2(SITE / f, docs / f)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max(2, min(8, os.cpu_count() or 2))) as ex:
        futs = [ex.submit(render, p, pages, i, docs, Path(tmp), cfg) for i, p in enumerate(pages)]
        for p, f in zip(pages, futs):
            secs = f.result()
            print(f'    {p["source"]:<32} -> _docs/{p["href"]:<24} {secs:5.1f} s', flush=True)
    t1 = time.time()
    build_search_index(docs)
    print(f'    search index (_docs/pagefind/) in {time.time() - t1:.1f} s', flush=True)
    write_manifest(docs, pages, cfg)
    print(f'==> {len(pages)} pages in {time.time() - t0:.1f} s', flush=True)
    print((docs / 'index.html').resolve())
    return 0


def write_manifest(docs: Path, pages: list[dict], cfg) -> None:
    "_docs/pages.json: the pages in order, for tests/test_site.py."
    manifest = [{k: p[k] for k in ('source', 'href', 'title', 'description')}
                | ({'generated': True} if p.get('generated') else {'exports': exported_names(NBS / p['source'])})
                for p in pages]
    (docs / 'pages.json').write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    (docs / '.nojekyll').touch()


if __name__ == '__main__':
    rc = main()
    sys.stdout.flush(); sys.stderr.flush()
    # nbdev's processing leaves IPython shells behind whose exit handlers take seconds (10+ s on a loaded machine);
    # everything is written by now, so leave without them
    os._exit(rc)
