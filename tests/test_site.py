"""The built website (`_docs/`, from `tools/build_site.py`) opened in a real browser.

Debian's Chromium, driven by playwright through `executable_path` (no browser download), loads every page from a local
HTTP server, with every request that would leave the machine refused, and checks:

- loading: no console errors, no failed requests, one <h1> (the notebook's title);
- the title block: the notebook's whole `>` description (all its lines) on the page, in the meta description and on
  the front page's chapter card, and the text that follows it in the title cell;
- links: every internal link and in-page anchor resolves (a link to the book's public URL counts as internal and fails:
  internal links are relative); no two elements share an id;
- text: math typeset as MathML, and no raw TeX (`$`, a `\\macro`, `^{`, `_{`), no unrendered markdown (a backtick)
  and no identifier that lost its underscores (`nngpntk` for `nngp_ntk`) anywhere in the visible text;
- figures load (as many as the notebook holds), the sidebar lists every page in order, each exported function has
  its API block, every heading a permalink, every code block a copy button, every chapter a link to its notebook;
- legibility: wide equations, code and tables scroll inside the column with a scroll cue, and at 390 px no page
  scrolls sideways; figures are not shown smaller than the column needs; a dark mode (system setting or toggle);
- search: Pagefind's index covers every page (but the gallery); typing a term finds the chapter that explains it, offline;
- the Markdown twins (`<page>.html.md`) that the module docstrings' `Docs:` lines and nbs/llms.txt link to exist.

Screenshots for a person to look at go to a temporary folder (printed; GEOBOOK_SCREENSHOTS=dir picks one), never into
`_docs/`. Build first: `python tools/build_site.py` (`make test` does).
"""
from __future__ import annotations
import functools, http.server, json, os, re, shutil, sys, threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit, unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
from notebooks import NBS, cell_source, chapters, directives, exported_names, has_math, read_nb, shown_images

DOCS = Path(os.environ.get('GEOBOOK_DOCS', ROOT / '_docs'))
NOTEBOOKS = [p.name for p in chapters()]
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
BUILD_HINT = 'run `python tools/build_site.py` first (`make test` builds the site before running the tests)'
DESKTOP, PHONE = {'width': 1440, 'height': 1000}, {'width': 390, 'height': 844}
# terms a reader would search for, and the page that must come up among the first results
SEARCHES = {'Sinkhorn': 'coding_rate.html', 'FlashAttention': 'fused_attention.html', 'criticality': 'rg_flow.html',
            'quantile': 'sliced_wasserstein.html'}


def _config():
    from nbdev.config import get_config
    return get_config(ROOT)

@functools.cache
def public_url() -> str:
    "The book's public address (pyproject's Documentation URL) with a trailing slash."
    cfg = _config()
    path = str(cfg.doc_baseurl or '').strip('/')
    return str(cfg.doc_host).rstrip('/') + '/' + (path + '/' if path else '') if cfg.doc_host else ''


# ---------------------------------------------------------------------------------------------------------------------
# what the notebooks say the pages must contain (read here independently of the site builder)
def title_cell_lines(nb_name: str) -> list[str]:
    cells = [c for c in read_nb(NBS / nb_name)['cells'] if c['cell_type'] == 'markdown']
    return cell_source(cells[0]).splitlines() if cells else []

def words(md: str) -> list[str]:
    "Plain words of a markdown snippet (math and markup dropped), for matching against page text."
    return re.findall(r'[A-Za-z]+', re.sub(r'\$[^$]*\$|`[^`]*`', ' ', md))

def has_words(text: str, ws: str, gap: int = 6) -> bool:
    """Whether the words `ws` occur in `text` in this order, at most `gap` other words apart (those come from typeset
    math, which the words of the markdown leave out)."""
    toks, want = re.findall(r'[A-Za-z]+', text), ws.split()
    def match(i, k):
        if k == len(want): return True
        return any(toks[j] == want[k] and match(j + 1, k + 1) for j in range(i, min(len(toks), i + gap + 1)))
    return not want or any(t == want[0] and match(i + 1, 1) for i, t in enumerate(toks))

def description_tail(nb_name: str) -> str:
    "The last words of the notebook's description (its `>` lines): they are lost first when a description is cut."
    desc = ' '.join(l.lstrip('>').strip() for l in title_cell_lines(nb_name) if l.startswith('>'))
    return ' '.join(words(desc)[-4:])

def title_cell_rest(nb_name: str) -> str:
    "The first words of what follows the description in the title cell (a paragraph citing the papers), or ''."
    rest = [l for l in title_cell_lines(nb_name) if l.strip() and not l.startswith(('#', '>'))]
    return ' '.join(words(rest[0])[:6]) if rest else ''

def squashed_identifiers() -> set[str]:
    "Names with underscores that the book documents, with the underscores removed: such a word in the text lost them."
    names = {n for nb in NOTEBOOKS for n in exported_names(NBS / nb)}
    idx = ROOT / 'geobook' / '_modidx.py'
    if idx.exists():
        names |= {s.split('.')[-1] for s in re.findall(r"'geobook\.[\w.]+'", idx.read_text()) for s in [s.strip("'")]}
    return {n.replace('_', '') for n in names if '_' in n.strip('_') and len(n.replace('_', '')) >= 5}

def quotes(s: str) -> str: return s.replace('’', "'").replace('‘', "'").replace('“', '"').replace('”', '"')


# ---------------------------------------------------------------------------------------------------------------------
# fixtures: the built site, a local server, the browser, one crawl of every page at desktop and at phone width
@pytest.fixture(scope='module')
def manifest() -> list[dict]:
    if not (DOCS / 'index.html').exists(): pytest.fail(f'{DOCS / "index.html"} is missing: {BUILD_HINT}')
    if not (DOCS / 'pages.json').exists(): pytest.fail(f'{DOCS / "pages.json"} is missing: {BUILD_HINT}')
    return json.loads((DOCS / 'pages.json').read_text())

@pytest.fixture(scope='module')
def server(manifest):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    Quiet.extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, '.wasm': 'application/wasm',
                            '.js': 'text/javascript', '.pf_meta': 'application/octet-stream'}
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
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()

def new_context(browser, viewport=DESKTOP, **kw):
    ctx = browser.new_context(viewport=viewport, device_scale_factor=1, **kw)
    ctx.route(re.compile(r'^(?!http://127\.0\.0\.1:).*'), lambda route: route.abort())  # nothing leaves the machine
    return ctx

def watch(page) -> tuple[list, list]:
    "Console errors and failed requests of `page`, collected as they happen."
    errors, failed = [], []
    page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.on('requestfailed', lambda r: failed.append(f'{r.url} ({r.failure})'))
    page.on('response', lambda r: failed.append(f'{r.url} (HTTP {r.status})') if r.status >= 400 else None)
    return errors, failed

_PAGE_JS = r"""() => {
  const skip = new Set(['PRE', 'CODE', 'KBD', 'SCRIPT', 'STYLE', 'MATH', 'ANNOTATION', 'SEMANTICS', 'TEMPLATE']);
  const texts = [];
  const walk = (n) => {
    if (n.nodeType === Node.TEXT_NODE) { texts.push(n.textContent); return; }
    if (n.nodeType !== Node.ELEMENT_NODE || skip.has(n.tagName.toUpperCase())) return;
    for (const c of n.childNodes) walk(c);
  };
  walk(document.body);
  const textOf = (el) => { const out = []; const w = (n) => {
      if (n.nodeType === Node.TEXT_NODE) { out.push(n.textContent); return; }
      if (n.nodeType === Node.ELEMENT_NODE && !skip.has(n.tagName.toUpperCase())) for (const c of n.childNodes) w(c); };
    if (el) w(el); return out.join(''); };
  document.querySelectorAll('details').forEach(d => { d.open = true; });   // solutions and folded code: measure them too
  const maths = [...document.querySelectorAll('math')].filter(m => m.checkVisibility());  // not in a hidden TOC copy
  const main = document.querySelector('main');
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  // things wider than their box: each must be a scroll container that draws the scroll cue (a gradient background)
  const scrolls = (e) => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX);
  const insideScroller = (e) => { for (let a = e.parentElement; a && a !== document.body; a = a.parentElement)
                                    if (scrolls(a)) return true; return false; };
  const overflowing = [...main.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
      && getComputedStyle(e).display !== 'inline' && e.checkVisibility() && (scrolls(e) || !insideScroller(e)))
    .map(e => { const s = getComputedStyle(e);
      return {tag: e.tagName.toLowerCase(), cls: e.className && e.className.baseVal === undefined ? e.className : '',
              overflow: s.overflowX, cue: s.backgroundImage.includes('gradient'),
              text: (e.textContent || '').trim().slice(0, 60)}; });
  const headings = [...main.querySelectorAll('h2[id], h3[id], h4[id]')].filter(h => !h.closest('.title-block'));
  const codeBlocks = [...main.querySelectorAll('div.sourceCode, .code-block')].filter(b => !b.closest('.output'));
  const column = main.getBoundingClientRect().width;
  return {
    title: document.title,
    ids,
    dup_ids: ids.filter((x, i) => ids.indexOf(x) !== i),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    text: texts.join(' '),
    description: textOf(document.querySelector('.title-block .description')),
    meta_description: (document.querySelector('meta[name=description]') || {content: ''}).content,
    source_link: [...document.querySelectorAll('.page-source a')].map(a => a.getAttribute('href')),
    math: document.querySelectorAll('math').length,
    math_visible: maths.length,
    unconverted: [...document.querySelectorAll('span.math, div.math')].map(e => e.textContent.slice(0, 60)),
    math_rendered: maths.filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length,
    images: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                                            natural: i.naturalWidth, shown: i.getBoundingClientRect().width,
                                            output: !!i.closest('.output')})),
    column,
    sidebar: [...document.querySelectorAll('nav.sidebar li a')].map(a => a.getAttribute('href')),
    api: [...document.querySelectorAll('.api-doc h2, .api-doc h3, .api-doc h4')].map(h => h.firstChild ? h.firstChild.textContent.trim() : ''),
    toc: document.querySelectorAll('aside.toc a').length,
    sections: document.querySelectorAll('main h2').length,
    h1: (document.querySelector('h1') || {}).textContent || '',
    h1count: document.querySelectorAll('h1').length,
    headings_without_permalink: headings.filter(h => !h.querySelector(`a.heading-anchor[href="#${CSS.escape(h.id)}"]`))
                                        .map(h => h.id),
    code_blocks: codeBlocks.length,
    code_without_copy: codeBlocks.filter(b => !b.querySelector(':scope > .copy-button')).length,
    overflowing,
    page_width: document.scrollingElement.scrollWidth,
    viewport_width: window.innerWidth,
  };
}"""

def settle(page, timeout_ms: int = 30_000):
    """Wait until the page's network is idle (500 ms without requests), at most `timeout_ms`: a wait, not a check. On
    2 cores the idle moment sometimes never came within 30 s although every request had been answered (failed
    requests and console errors are still collected by `watch` and asserted on)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    try: page.wait_for_load_state('networkidle', timeout=timeout_ms)
    except PlaywrightTimeout: pass

def crawl_site(browser, server, manifest, viewport, **ctx_kw) -> dict[str, dict]:
    ctx = new_context(browser, viewport, **ctx_kw)
    out = {}
    for entry in manifest:
        page = ctx.new_page()
        errors, failed = watch(page)
        resp = page.goto(server + entry['href'], wait_until='load')
        settle(page)
        data = page.evaluate(_PAGE_JS)
        data.update(status=resp.status if resp else None, errors=errors, failed=failed, url=page.url)
        out[entry['href']] = data
        page.close()
    ctx.close()
    return out

@pytest.fixture(scope='module')
def crawl(manifest, server, browser) -> dict[str, dict]:
    "Every page opened once at desktop width."
    return crawl_site(browser, server, manifest, DESKTOP)

@pytest.fixture(scope='module')
def crawl_phone(manifest, server, browser) -> dict[str, dict]:
    "Every page opened once at a phone's width (390 px)."
    return crawl_site(browser, server, manifest, PHONE, is_mobile=True, has_touch=True)


def broken_links(d: dict, crawl: dict) -> list[str]:
    "Internal links of crawled page `d` (relative, or absolute to the book's public URL) to a missing file or anchor."
    pages_ids = {href: set(v['ids']) for href, v in crawl.items()}
    bad, base = [], public_url()
    for href in d['links']:
        if base and href.startswith(base):
            bad.append(f'{href} (absolute link to the public site: internal links must be relative)')
            href = href[len(base):] or 'index.html'
        url = urlsplit(urljoin(d['url'], href))
        if url.scheme not in ('http', 'https') or url.netloc != urlsplit(d['url']).netloc: continue
        target = unquote(url.path).lstrip('/') or 'index.html'
        if not (DOCS / target).is_file(): bad.append(f'{href} (no file {target})'); continue
        if url.fragment and target.endswith('.html'):
            ids = pages_ids.get(target)
            if ids is None: bad.append(f'{href} (not a page of the book)')
            elif unquote(url.fragment) not in ids: bad.append(f'{href} (no anchor #{url.fragment})')
    return bad

RAW_TEX = re.compile(r'.{0,30}(\$|\\[A-Za-z]+|\\[\[\]()]|[\^_]\{).{0,30}')

def text_problems(d: dict) -> list[str]:
    "Raw TeX or identifiers without their underscores in the visible text (and raw TeX in the meta description)."
    raw = [m.group(0) for m in RAW_TEX.finditer(d['text'])]
    raw += [f'unrendered markdown: {m.group(0)}' for m in re.finditer(r'.{0,30}`.{0,30}', d['text'])]
    raw += [f'meta description: {m.group(0)}' for m in RAW_TEX.finditer(d['meta_description'])]
    squashed = sorted({w for w in squashed_identifiers() if re.search(rf'\b{re.escape(w)}\b', d['text'])})
    return [f'raw TeX: {r!r}' for r in raw[:5]] + [f'lost underscores: {w!r}' for w in squashed]

def layout_problems(d: dict) -> list[str]:
    "Sideways page scroll, or something wider than its box that does not scroll with a cue."
    out = []
    if d['page_width'] > d['viewport_width']:
        out.append(f"the page scrolls sideways: {d['page_width']} px wide in a {d['viewport_width']} px window")
    for e in d['overflowing']:
        if e['overflow'] not in ('auto', 'scroll') or not e['cue']:
            out.append(f"<{e['tag']} class={e['cls']!r}> ({e['text']!r}) is wider than its box but "
                       + ('does not scroll' if e['overflow'] not in ('auto', 'scroll') else 'shows no scroll cue'))
    return out

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
    assert quotes(d['h1'].strip()) == quotes(entry['title']), f'{where}: page title {d["h1"]!r}'
    assert d['h1count'] == 1, (f'{where}: {d["h1count"]} top-level headings; only the title may be one (a markdown '
                               'line starting with "# " in the body is a stray heading)')

    # the whole title block: every line of the description, and what follows it in the title cell
    tail = description_tail(nb_name)
    if tail:
        assert has_words(d['description'], tail), f'{where}: the description is cut: {d["description"]!r}'
        assert has_words(d['meta_description'], tail), f'{where}: meta description cut: {d["meta_description"]!r}'
    if rest := title_cell_rest(nb_name):
        assert has_words(d['text'], rest), f'{where}: the text after the description ({rest!r}...) is missing'

    # plumbing after results: cells marked `#| appendix: true` close the page (the performance page's readers and adapters)
    if any(directives(cell_source(c)).get('appendix') is True for c in read_nb(NBS / nb_name)['cells']):
        t = d['text']
        assert 'How this page is made' in t, f'{where}: the appendix heading is missing'
        if 'Verdicts' in t: assert t.index('Verdicts') < t.index('How this page is made'), f'{where}: plumbing first'

    # links and anchors
    assert not d['dup_ids'], f'{where}: ids used twice (an anchor would be ambiguous): {sorted(set(d["dup_ids"]))}'
    assert not broken_links(d, crawl), f'{where}: broken internal links {broken_links(d, crawl)}'

    # math typeset, nothing raw left
    if has_math(NBS / nb_name):
        assert d['math'] > 0, f'{where}: the notebook has math but the page has no <math> element'
        assert d['math_rendered'] == d['math_visible'], \
            f'{where}: {d["math_visible"] - d["math_rendered"]} <math> elements not laid out'
    assert not d['unconverted'], f'{where}: math pandoc could not convert to MathML: {d["unconverted"][:5]}'
    assert not text_problems(d), f'{where}: {text_problems(d)}'

    # figures load
    broken = [i['src'] for i in d['images'] if not i['ok']]
    assert not broken, f'{where}: images that did not load {broken}'
    assert len(d['images']) >= shown_images(NBS / nb_name), f'{where}: fewer <img> than the notebook has figures'

    # navigation: the sidebar lists every page, in order; a page table of contents where there are sections
    assert d['sidebar'] == [e['href'] for e in manifest], f'{where}: sidebar {d["sidebar"]}'
    if d['sections'] > 1: assert d['toc'] >= d['sections'], f'{where}: the table of contents misses sections'
    assert not d['headings_without_permalink'], f'{where}: headings without a permalink {d["headings_without_permalink"]}'
    assert d['code_without_copy'] == 0, f'{where}: {d["code_without_copy"]} of {d["code_blocks"]} code blocks have no copy button'

    # the notebook's source, on the repository
    cfg = _config()
    want = f"{str(cfg.git_url).rstrip('/')}/blob/{cfg.branch}/nbs/{nb_name}"
    assert d['source_link'] == [want], f'{where}: link to the notebook {d["source_link"]}, expected {want}'
    assert (NBS / nb_name).is_file()

    # API docs for every exported function/class
    exports = exported_names(NBS / nb_name)
    missing = [n for n in exports if not any(re.fullmatch(rf'(\w+\.)?{re.escape(n)}(\s.*)?', h) for h in d['api'])]
    assert not missing, (f'{where}: no show_doc API block for {missing} (nbdev adds show_doc after each `#| export` '
                         'cell unless the notebook calls show_doc itself; a cell shows only its last expression, so '
                         'one show_doc(...) per cell)')

@pytest.mark.parametrize('size', ['desktop', 'phone'])
def test_wide_content_scrolls_in_the_column(size, manifest, crawl, crawl_phone):
    """Nothing makes a page scroll sideways; equations, code, outputs and tables wider than the column scroll inside
    it, with a visible cue (shadows on the side that has more)."""
    pages = crawl if size == 'desktop' else crawl_phone
    problems = {href: layout_problems(d) for href, d in pages.items()}
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, f'at {size} width: {json.dumps(problems, indent=1, ensure_ascii=False)[:3000]}'
    for href, d in pages.items():
        assert not d['errors'] and not d['failed'], (href, d['errors'], d['failed'])

def test_figures_use_the_column(crawl):
    """A figure is shown at its natural size, or as wide as the column when it is wider (then its text is smaller than
    drawn: tests/test_repo.py holds figures to a width that keeps it readable)."""
    small = [(href, i['src'], i['natural'], round(i['shown'])) for href, d in crawl.items() for i in d['images']
             if i['output'] and i['ok'] and i['shown'] < min(i['natural'], d['column']) - 2]
    assert not small, f'figures shown smaller than the column allows (page, image, natural px, shown px): {small}'

def test_gallery(manifest, crawl):
    "The gallery lists every saved figure of every chapter, each image loads and links back to its chapter's anchor."
    entry = next((e for e in manifest if e['href'] == 'gallery.html'), None)
    assert entry is not None, f'no gallery page: {BUILD_HINT}'
    d = crawl['gallery.html']
    assert d['status'] == 200 and not d['errors'] and not d['failed'], d
    n_figures = sum(shown_images(NBS / nb) for nb in NOTEBOOKS)
    gallery_imgs = [i for i in d['images'] if 'gallery/' in i['src']]
    assert len(gallery_imgs) == n_figures, f'gallery shows {len(gallery_imgs)} figures, the notebooks hold {n_figures}'
    assert all(i['ok'] for i in d['images']), [i['src'] for i in d['images'] if not i['ok']]
    assert not broken_links(d, crawl), broken_links(d, crawl)
    assert not d['dup_ids'], sorted(set(d['dup_ids']))
    assert not text_problems(d), f'gallery captions: {text_problems(d)}'
    assert d['math_rendered'] == d['math_visible'] and not d['unconverted']
    assert d['sidebar'] == [e['href'] for e in manifest]

def test_front_page_chapter_map(manifest, crawl):
    """The front page shows one card per chapter, with its whole summary and, once the chapter has figures, one of
    them."""
    d = crawl['index.html']
    chapters_ = [e for e in manifest if e['href'] != 'index.html' and not e.get('generated')]
    cards = [l for l in d['links'] if l in {e['href'] for e in chapters_}]
    for e in chapters_:
        assert e['href'] in cards, f"the front page does not link {e['href']}"
        if tail := description_tail(e['source']):
            assert has_words(d['text'], tail), f"the front page's card for {e['href']} cuts its summary before {tail!r}"
    with_figs = [e for e in chapters_ if shown_images(NBS / e['source'])]
    card_imgs = [i for i in d['images'] if 'gallery/' in i['src']]
    assert len(card_imgs) == len(with_figs), f'{len(card_imgs)} chapter figures on the front page, expected {len(with_figs)}'
    assert all(i['ok'] for i in card_imgs)

def test_search(manifest, server, browser):
    """Pagefind's index holds every page, and the search dialog finds the chapter for a term, with no network: the
    browser refuses every request that would leave this machine."""
    entry = json.loads((DOCS / 'pagefind' / 'pagefind-entry.json').read_text())
    indexed = sum(lang.get('page_count', 0) for lang in entry.get('languages', {}).values())
    pages = [e for e in manifest if not e.get('generated')]     # the gallery repeats the chapters' headings: not indexed
    assert indexed == len(pages), f'the search index holds {indexed} pages, the site has {len(pages)} to index'
    ctx = new_context(browser)
    page = ctx.new_page()
    errors, failed = watch(page)
    page.goto(server + 'ntk.html', wait_until='load')
    page.locator('.search-wide').click()
    box = page.locator('#search-dialog input')
    box.wait_for(state='visible', timeout=15_000)
    found = {}
    for term, want in SEARCHES.items():
        box.fill('')
        page.wait_for_function("() => !document.querySelector('#search-dialog .pagefind-ui__result')", timeout=10_000)
        box.fill(term)
        # the count comes first, the results (titles, links) once their fragments have loaded
        page.wait_for_function("""(t) => { const m = document.querySelector('#search-dialog .pagefind-ui__message');
                                        if (!m || !m.textContent.includes(t)) return false;
                                        if (/^No results/.test(m.textContent.trim())) return true;
                                        const items = [...document.querySelectorAll('#search-dialog li.pagefind-ui__result')];
                                        return items.length > 0 && items.every(li => li.querySelector('a.pagefind-ui__result-link')) }""",
                               arg=term, timeout=20_000)
        links = page.locator('#search-dialog li.pagefind-ui__result > .pagefind-ui__result-inner > .pagefind-ui__result-title a')
        found[term] = [Path(urlsplit(h).path).name or 'index.html' for h in links.evaluate_all('as => as.map(a => a.getAttribute("href"))')]
        assert want in found[term][:3], f'searching {term!r}: first results {found[term][:5]}, expected {want} among the first three'
        assert all(h.startswith(urlsplit(server).path) for h in
                   links.evaluate_all('as => as.map(a => new URL(a.href).pathname)')), 'a result outside the site'
    page.keyboard.press('Escape')
    assert not page.locator('#search-dialog').evaluate('d => d.open')
    assert not errors and not failed, (errors, failed)
    ctx.close()

def test_copy_button(server, browser):
    "A code block's copy button puts exactly its code on the clipboard."
    origin = server.rstrip('/')
    ctx = new_context(browser, permissions=['clipboard-read', 'clipboard-write'])
    ctx.grant_permissions(['clipboard-read', 'clipboard-write'], origin=origin)
    page = ctx.new_page()
    page.goto(server + 'core.html', wait_until='load')
    block = page.locator('main div.sourceCode.has-copy').first
    code = block.locator('pre').inner_text().rstrip('\n')
    block.hover(); block.locator('.copy-button').click()
    page.wait_for_function("() => document.querySelector('.copy-button').textContent === 'Copied'", timeout=5_000)
    assert page.evaluate('navigator.clipboard.readText()') == code
    ctx.close()

def _luminance(rgb: str) -> float:
    r, g, b = [int(x) / 255 for x in re.findall(r'\d+', rgb)[:3]]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b

def test_dark_mode(server, browser, shots):
    """Dark when the system asks for it; the toggle switches to light and the choice holds on the next page."""
    ctx = new_context(browser, color_scheme='dark')
    page = ctx.new_page()
    errors, failed = watch(page)
    page.goto(server + 'sliced_wasserstein.html', wait_until='load'); settle(page)
    style = lambda sel, prop: page.evaluate(f"getComputedStyle(document.querySelector('{sel}')).{prop}")
    assert _luminance(style('body', 'backgroundColor')) < 0.2 and _luminance(style('body', 'color')) > 0.7
    assert _luminance(style('main div.sourceCode', 'backgroundColor')) < 0.25
    page.screenshot(path=str(shots / 'chapter_dark.png'))
    page.locator('.sidebar .theme-toggle').click()
    assert _luminance(style('body', 'backgroundColor')) > 0.8
    page.goto(server + 'core.html', wait_until='load')
    assert _luminance(style('body', 'backgroundColor')) > 0.8, 'the choice of light did not hold on the next page'
    assert not errors and not failed, (errors, failed)
    ctx.close()

def test_markdown_twins_for_docs_links(manifest):
    """Every page has its Markdown twin, and every `Docs:` link of a module docstring and every link in nbs/llms.txt
    (nbdev-export writes both) points at a page the build makes."""
    for e in manifest: assert (DOCS / (e['href'] + '.md')).is_file(), f"no {e['href']}.md"
    base, links = public_url(), []
    for py in sorted((ROOT / 'geobook').glob('*.py')):
        links += [(py.name, u) for u in re.findall(r'^Docs:\s*(\S+)', py.read_text().split('"""')[1] if '"""' in
                                                   py.read_text() else '', re.M)]
    llms = NBS / 'llms.txt'
    if llms.exists(): links += [('llms.txt', u) for u in re.findall(r'\]\((\S+?)\)', llms.read_text())]
    assert links, 'no Docs: links found'
    bad = [(f, u) for f, u in links if not u.startswith(base) or not (DOCS / u[len(base):].split('#')[0]).is_file()]
    assert not bad, f'links to pages the build does not make: {bad}'

def test_screenshots(manifest, server, browser, shots):
    "Screenshots for a person: the front page, a chapter (top and whole) at desktop width, a chapter on a phone."
    ctx = new_context(browser)
    page = ctx.new_page()
    page.goto(server + 'index.html', wait_until='load'); settle(page)
    page.screenshot(path=str(shots / 'index.png'))
    chapter = next((e['href'] for e in manifest if e['href'] == 'core.html'), manifest[-1]['href'])
    page.goto(server + chapter, wait_until='load'); settle(page)
    page.screenshot(path=str(shots / 'chapter.png'))
    page.screenshot(path=str(shots / 'chapter_full.png'), full_page=True)
    ctx.close()
    ctx = new_context(browser, PHONE, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    page.goto(server + chapter, wait_until='load'); settle(page)
    page.screenshot(path=str(shots / 'chapter_phone.png'))
    ctx.close()
    for name in ('index.png', 'chapter.png', 'chapter_phone.png', 'chapter_dark.png'):
        if (shots / name).exists(): assert (shots / name).stat().st_size > 10_000, name
    assert not list(DOCS.glob('screenshot*')), 'screenshots in the site folder'
