"""The built website (`_docs/`, from `tools/build_site.py`) opened in a real browser.

Debian's Chromium, driven by playwright through `executable_path` (no browser download), loads every page from a local
HTTP server and checks: no console errors and no failed requests; every internal link resolves to an existing page and
anchor; math is typeset (MathML present where the notebook has math, nothing raw like `$$` or `\\[` left in the text);
every image loads; the sidebar lists every page in order; the API docs (show_doc) of each exported function are on its
chapter's page. Screenshots for a person to look at: `_docs/screenshot_index.png`, `_docs/screenshot_chapter.png` (and
the whole chapter in `_docs/screenshot_chapter_full.png`).

Build first: `python tools/build_site.py` (`make test` does).
"""
from __future__ import annotations
import ast, functools, http.server, json, os, re, shutil, threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit, unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
DOCS = Path(os.environ.get('GEOBOOK_DOCS', ROOT / '_docs'))
NOTEBOOKS = sorted((p.name for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.'))),
                   key=lambda n: (n != 'index.ipynb', n))
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
BUILD_HINT = 'run `python tools/build_site.py` first (`make test` builds the site before running the tests)'


# ---------------------------------------------------------------------------------------------------------------------
# what the notebooks say the pages must contain
def _cells(nb_name: str) -> list[dict]:
    return json.loads((NBS / nb_name).read_text())['cells']

def _src(c) -> str: return ''.join(c['source']) if isinstance(c['source'], list) else c['source']

def notebook_has_math(nb_name: str) -> bool:
    "Markdown with `$...$` / `$$...$$` math (outside code spans and fences)."
    for c in _cells(nb_name):
        if c['cell_type'] != 'markdown': continue
        text = re.sub(r'```.*?```|`[^`\n]*`', '', _src(c), flags=re.S)
        if re.search(r'\$\$.+?\$\$|\$[^\s$][^$\n]*?\$', text, re.S): return True
    return False

def notebook_images(nb_name: str) -> int:
    "Image outputs saved in the notebook (figures appear once the notebook has been executed and saved)."
    n = 0
    for c in _cells(nb_name):
        if c['cell_type'] != 'code' or re.search(r'^\s*#\|\s*(include|output):\s*false', _src(c), re.M): continue
        n += sum(any(k.startswith('image/') for k in o.get('data', {})) for o in c.get('outputs', []))
    return n

def notebook_exports(nb_name: str) -> list[str]:
    "Public functions and classes of the notebook's `#| export` cells: each gets show_doc API docs on the page."
    names = []
    for c in _cells(nb_name):
        s = _src(c)
        if c['cell_type'] != 'code' or not re.search(r'^\s*#\|\s*export\s*$', s, re.M): continue
        try: tree = ast.parse('\n'.join(l for l in s.splitlines() if not l.lstrip().startswith(('%', '!'))))
        except SyntaxError: continue
        names += [n.name for n in tree.body
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not n.name.startswith('_')]
    return names


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: the built site, a local server, the browser, and one crawl of every page
@pytest.fixture(scope='module')
def manifest() -> list[dict]:
    if not (DOCS / 'index.html').exists(): pytest.fail(f'{DOCS / "index.html"} is missing: {BUILD_HINT}')
    if not (DOCS / 'pages.json').exists(): pytest.fail(f'{DOCS / "pages.json"} is missing: {BUILD_HINT}')
    return json.loads((DOCS / 'pages.json').read_text())

@pytest.fixture(scope='module')
def server(manifest):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(DOCS)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close(); t.join(5)

def chromium_path() -> str:
    exe = os.environ.get('GEOBOOK_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not exe:
        pytest.fail("The site check needs Chromium: install Debian's `chromium` package (`make chromium`) "
                    "or point GEOBOOK_CHROMIUM at a Chromium binary.")
    return exe

@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()

_PAGE_JS = r"""() => {
  const skip = new Set(['PRE', 'CODE', 'SCRIPT', 'STYLE', 'MATH', 'ANNOTATION']);
  const texts = [];
  const walk = (n) => {
    if (n.nodeType === Node.TEXT_NODE) { texts.push(n.textContent); return; }
    if (n.nodeType !== Node.ELEMENT_NODE || skip.has(n.tagName.toUpperCase())) return;
    for (const c of n.childNodes) walk(c);
  };
  walk(document.body);
  document.querySelectorAll('details').forEach(d => { d.open = true; });   // solutions and folded code: measure them too
  const maths = [...document.querySelectorAll('math')].filter(m => m.checkVisibility());  // not in a hidden TOC copy
  return {
    title: document.title,
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    text: texts.join(' '),
    math: document.querySelectorAll('math').length,
    math_visible: maths.length,
    unconverted: [...document.querySelectorAll('span.math, div.math')].map(e => e.textContent.slice(0, 60)),
    math_rendered: maths.filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length,
    images: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
    // pandoc build (tools/site/template.html); the Quarto build's equivalents after the comma
    sidebar: [...document.querySelectorAll('nav.sidebar li a, #quarto-sidebar .sidebar-item a.sidebar-link')]
               .map(a => a.getAttribute('href').replace(/^\.\//, '')),
    api: [...document.querySelectorAll(document.querySelector('.api-doc') ? '.api-doc h2, .api-doc h3, .api-doc h4'
                                                                             : 'main h3, main h4')].map(h => h.textContent.trim()),
    toc: document.querySelectorAll('aside.toc a, nav#TOC a').length,
    sections: document.querySelectorAll('main h2').length,
    h1: (document.querySelector('h1') || {}).textContent || '',
    h1count: document.querySelectorAll('h1').length,
  };
}"""

@pytest.fixture(scope='module')
def crawl(manifest, server, browser) -> dict[str, dict]:
    "Open every page once; keep what the tests look at, the console errors and the failed requests."
    ctx = browser.new_context(viewport={'width': 1440, 'height': 1000}, device_scale_factor=1)
    ctx.route(re.compile(r'^(?!http://127\.0\.0\.1:).*'), lambda route: route.abort())  # nothing leaves the machine
    out = {}
    for entry in manifest:
        page = ctx.new_page()
        errors, failed = [], []
        page.on('console', lambda m, errors=errors: errors.append(m.text) if m.type == 'error' else None)
        page.on('pageerror', lambda e, errors=errors: errors.append(str(e)))
        page.on('requestfailed', lambda r, failed=failed: failed.append(f'{r.url} ({r.failure})'))
        page.on('response', lambda r, failed=failed: failed.append(f'{r.url} (HTTP {r.status})') if r.status >= 400 else None)
        resp = page.goto(server + entry['href'], wait_until='load')
        page.wait_for_load_state('networkidle')
        data = page.evaluate(_PAGE_JS)
        data.update(status=resp.status if resp else None, errors=errors, failed=failed, url=page.url)
        out[entry['href']] = data
        if entry['href'] == 'index.html':
            page.screenshot(path=str(DOCS / 'screenshot_index.png'))
        page.close()
    # the chapter screenshot: the first chapter page with math and a figure (core.html when it has both)
    chapters = [e for e in manifest if e['href'] != 'index.html']
    best = sorted(chapters, key=lambda e: (-(out[e['href']]['math'] > 0 and len(out[e['href']]['images']) > 0),
                                           e['href'] != 'core.html'))
    if best:
        page = ctx.new_page()
        page.goto(server + best[0]['href'], wait_until='load'); page.wait_for_load_state('networkidle')
        page.screenshot(path=str(DOCS / 'screenshot_chapter.png'))
        page.screenshot(path=str(DOCS / 'screenshot_chapter_full.png'), full_page=True)
        page.close()
    ctx.close()
    return out


def broken_links(d: dict, crawl: dict) -> list[str]:
    "Internal links of crawled page `d` that point to a missing file or a missing anchor."
    pages_ids = {href: set(v['ids']) for href, v in crawl.items()}
    bad = []
    for href in d['links']:
        url = urlsplit(urljoin(d['url'], href))
        if url.scheme not in ('http', 'https') or url.netloc != urlsplit(d['url']).netloc: continue
        target = unquote(url.path).lstrip('/') or 'index.html'
        if not (DOCS / target).is_file(): bad.append(f'{href} (no file {target})'); continue
        if url.fragment and target.endswith('.html'):
            ids = pages_ids.get(target)
            if ids is None: bad.append(f'{href} (not a page of the book)')
            elif unquote(url.fragment) not in ids: bad.append(f'{href} (no anchor #{url.fragment})')
    return bad

def _page(manifest, nb_name):
    entry = next((e for e in manifest if e['source'] == nb_name), None)
    assert entry is not None, f'{nb_name} has no page in {DOCS}: rebuild the site ({BUILD_HINT})'
    return entry


# ---------------------------------------------------------------------------------------------------------------------
# the checks
def test_every_notebook_has_a_page(manifest):
    assert [e['source'] for e in manifest if not e.get('generated')] == NOTEBOOKS, f'pages and notebooks differ: {BUILD_HINT}'
    assert manifest[0]['href'] == 'index.html'
    for e in manifest: assert (DOCS / e['href']).is_file(), e

@pytest.mark.parametrize('nb_name', NOTEBOOKS)
def test_page(nb_name, manifest, crawl):
    entry = _page(manifest, nb_name)
    d = crawl[entry['href']]
    where = f"{entry['href']} (from {nb_name})"

    # loads cleanly
    assert d['status'] == 200, where
    assert not d['errors'], f'{where}: console errors {d["errors"]}'
    assert not d['failed'], f'{where}: failed requests {d["failed"]}'
    assert d['h1'].strip() == entry['title'], f'{where}: page title {d["h1"]!r}'
    assert d['h1count'] == 1, (f'{where}: {d["h1count"]} top-level headings; only the title may be one (a markdown '
                               'line starting with "# " in the body is a stray heading)')

    assert not broken_links(d, crawl), f'{where}: broken internal links {broken_links(d, crawl)}'

    # math typeset, nothing raw left
    if notebook_has_math(nb_name):
        assert d['math'] > 0, f'{where}: the notebook has math but the page has no <math> element'
        assert d['math_rendered'] == d['math_visible'], \
            f'{where}: {d["math_visible"] - d["math_rendered"]} <math> elements not laid out'
    assert not d['unconverted'], f'{where}: math pandoc could not convert to MathML: {d["unconverted"][:5]}'
    raw = [m.group(0) for m in re.finditer(r'.{0,30}(\$\$|\\\[|\\\(|\$\\|\\begin\{).{0,30}', d['text'])]
    assert not raw, f'{where}: raw TeX left in the text: {raw[:5]}'

    # figures load
    broken = [i['src'] for i in d['images'] if not i['ok']]
    assert not broken, f'{where}: images that did not load {broken}'
    assert len(d['images']) >= notebook_images(nb_name), f'{where}: fewer <img> than the notebook has figures'

    # navigation: the sidebar lists every page, in order; a page table of contents where there are sections
    assert d['sidebar'] == [e['href'] for e in manifest], f'{where}: sidebar {d["sidebar"]}'
    if d['sections'] > 1: assert d['toc'] >= d['sections'], f'{where}: the table of contents misses sections'

    # API docs for every exported function/class
    exports = notebook_exports(nb_name)
    missing = [n for n in exports if not any(re.fullmatch(rf'(\w+\.)?{re.escape(n)}(\s.*)?', h) for h in d['api'])]
    assert not missing, (f'{where}: no show_doc API block for {missing} (nbdev adds show_doc after each `#| export` '
                         'cell unless the notebook calls show_doc itself; a cell shows only its last expression, so '
                         'one show_doc(...) per cell)')

def test_screenshots(crawl):
    for name in ('screenshot_index.png', 'screenshot_chapter.png'):
        p = DOCS / name
        assert p.is_file() and p.stat().st_size > 10_000, p


def test_gallery(manifest, crawl):
    "The gallery lists every saved figure of every chapter, each image loads and links back to its chapter's anchor."
    entry = next((e for e in manifest if e['href'] == 'gallery.html'), None)
    assert entry is not None, f'no gallery page: {BUILD_HINT}'
    d = crawl['gallery.html']
    assert d['status'] == 200 and not d['errors'] and not d['failed'], d
    n_figures = sum(notebook_images(nb) for nb in NOTEBOOKS)
    gallery_imgs = [i for i in d['images'] if 'gallery/' in i['src']]
    assert len(gallery_imgs) == n_figures, f'gallery shows {len(gallery_imgs)} figures, the notebooks hold {n_figures}'
    assert all(i['ok'] for i in d['images']), [i['src'] for i in d['images'] if not i['ok']]
    assert not broken_links(d, crawl), broken_links(d, crawl)
    assert d['sidebar'] == [e['href'] for e in manifest]

def test_front_page_chapter_map(manifest, crawl):
    "The front page shows one card per chapter, with its summary and, once the chapter has figures, one of them."
    d = crawl['index.html']
    chapters = [e for e in manifest if e['href'] != 'index.html' and not e.get('generated')]
    cards = [l for l in d['links'] if l in {e['href'] for e in chapters}]
    for e in chapters: assert e['href'] in cards, f"the front page does not link {e['href']}"
    with_figs = [e for e in chapters if notebook_images(e['source'])]
    card_imgs = [i for i in d['images'] if 'gallery/' in i['src']]
    assert len(card_imgs) == len(with_figs), f'{len(card_imgs)} chapter figures on the front page, expected {len(with_figs)}'
    assert all(i['ok'] for i in card_imgs)
