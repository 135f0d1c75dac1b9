"""Every chapter run the way a student runs it: JupyterLab in headless Chromium, Run > Run All Cells, twice.

A JupyterLab server is started on a free loopback port with a random token, on a temporary copy of nbs/ from which
the cells flagged `slow` or `cuda` are removed (the CPU-sized default path). For each chapter the test opens the
notebook, runs all cells through the menu, waits for the kernel to be idle, saves, and checks that no cell has an error
output and that the chapter's figures appear; then it restarts the kernel, runs all again and checks the numbers
(text outputs and figures) are the same. It also checks that no chapter leaves files behind, in its folder or in the
repository. A screenshot of one executed chapter is saved as _docs/screenshot_lab.png.

This takes several minutes, so it is marked `slow` and runs in `make test-all`.
"""
import hashlib, json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from notebooks import ROOT, chapters

pytestmark = pytest.mark.slow
CHAPTERS = [p for p in chapters() if p.name != 'index.ipynb']
FLAG_RE = re.compile(r'^\s*#\|\s*(slow|cuda)\b', re.M)
TIME_RE = re.compile(r'\d+(\.\d+)?\s*(s|ms|µs|us|sec|seconds|it/s|s/it)\b')

def chromium_path() -> str:
    path = os.environ.get('GEOBOOK_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not path: pytest.fail("Chromium not found: install Debian's `chromium` (make test does) or set GEOBOOK_CHROMIUM")
    return path

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def default_path_copy(src: Path, dst: Path):
    "Copy notebook `src` to `dst` without its `slow`/`cuda` cells and without outputs."
    nb = json.loads(src.read_text())
    nb['cells'] = [c for c in nb['cells'] if not (c['cell_type'] == 'code' and FLAG_RE.search(''.join(c['source'])))]
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
    dst.write_text(json.dumps(nb))

def git_untracked() -> set:
    out = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=ROOT, capture_output=True, text=True)
    return set(out.stdout.splitlines())

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp('lab')
    work, state = root / 'nbs', root / 'state'
    work.mkdir(); state.mkdir()
    for nb in CHAPTERS: default_path_copy(nb, work / nb.name)
    # chapters read the benchmark results at ../benchmarks/results, as in the repository
    shutil.copytree(ROOT / 'benchmarks' / 'results', root / 'benchmarks' / 'results')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTERLAB_SETTINGS_DIR': str(state / 'settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(state / 'ws'),
           'JUPYTER_RUNTIME_DIR': str(state / 'runtime'), 'GEOBOOK_NO_PROGRESS': '1'}
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--LabApp.news_url=',
           '--ServerApp.port_retries=0'] + (['--allow-root'] if os.geteuid() == 0 else [])
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(state / 'lab.log', 'w'))
    base = f'http://127.0.0.1:{port}'
    for _ in range(120):
        if proc.poll() is not None: break
        try:
            urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=1); break
        except OSError: time.sleep(0.5)
    else:
        proc.kill(); pytest.fail(f"JupyterLab did not start: {(state / 'lab.log').read_text()[-2000:]}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=[
            '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
            '--disable-sync', '--no-first-run', '--disable-quic'])
        yield dict(base=base, token=token, work=work, browser=browser)
        browser.close()
    proc.terminate(); proc.wait(timeout=30)

def wait_idle(page, timeout_s: float, all_run: bool = False):
    """Wait until no cell is queued or running ([*]) and the kernel reports idle; with `all_run`, also until every
    non-empty code cell shows an execution count."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        accept_kernel_dialog(page)
        prompts = page.locator('.jp-CodeCell .jp-InputArea-prompt').all_text_contents()
        status = page.locator('.jp-Notebook-ExecutionIndicator').first.get_attribute('data-status')
        done = all(re.search(r'\[\d+\]', p) for p in prompts) if all_run else True
        if not any('*' in p for p in prompts) and status == 'idle' and done: return
        time.sleep(1)
    page.screenshot(path=str(ROOT / '_docs' / 'screenshot_lab_failure.png'))
    raise AssertionError(f'kernel still busy (or cells not run) after {timeout_s} s: status {status}, prompts {prompts}')

def save(page, nb_path: Path, timeout_s=30):
    "Save through the UI and wait until the file on disk holds the executed notebook."
    page.keyboard.press('Control+s')
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(1)
        try: cells = json.loads(nb_path.read_text())['cells']
        except (json.JSONDecodeError, OSError): continue
        if all(c.get('execution_count') is not None for c in cells if c['cell_type'] == 'code' and ''.join(c['source']).strip()):
            return
    raise AssertionError(f'{nb_path.name} was not saved with its outputs')

def accept_kernel_dialog(page):
    "If JupyterLab asks which kernel to use (a notebook opened before its session is ready), take the default one."
    dialog = page.locator('.jp-Dialog', has_text='Select Kernel')
    if dialog.count(): dialog.locator('.jp-Dialog-button.jp-mod-accept').first.click(); time.sleep(2)

def wait_kernel_ready(page, timeout_s=120):
    "Wait until the notebook's kernel is connected and idle (status bar: '<kernel name> | Idle')."
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        accept_kernel_dialog(page)
        if re.search(r'\|\s*Idle', ' '.join(page.locator('.jp-StatusBar-Widget').all_text_contents())): return
        time.sleep(0.5)
    raise AssertionError('the kernel did not become ready')

def run_all(page, nb_path, timeout_s=float(os.environ.get("GEOBOOK_LAB_TIMEOUT", 300))):
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text=re.compile(r'^Run All Cells$')).first.click()
    time.sleep(2)
    accept_kernel_dialog(page)
    wait_idle(page, timeout_s, all_run=True)
    save(page, nb_path)

def restart_and_run_all(page, nb_path, timeout_s=300):
    page.locator('.lm-MenuBar-itemLabel', has_text='Kernel').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Restart Kernel and Run All Cells').first.click()
    page.locator('.jp-Dialog-button.jp-mod-accept').first.click()
    time.sleep(3)
    wait_idle(page, timeout_s, all_run=True)
    save(page, nb_path)

MEASURED = 'vary between runs'   # cells that measure this machine (time, memory) say so in a comment: not compared

def fingerprint(nb_path: Path) -> list:
    """The numbers a reader sees: stdout and results (timings masked) and a hash of each figure, cell by cell, except
    in cells marked as measurements of the machine (a comment containing 'vary between runs')."""
    out = []
    for c in json.loads(nb_path.read_text())['cells']:
        if MEASURED in ''.join(c.get('source', '')): continue
        for o in c.get('outputs', []):
            if o['output_type'] == 'stream' and o['name'] == 'stdout': out.append(TIME_RE.sub('<t>', ''.join(o['text'])))
            elif o['output_type'] in ('execute_result', 'display_data'):
                d = o['data']
                if 'image/png' in d: out.append('png:' + hashlib.sha256(''.join(d['image/png']).encode()).hexdigest())
                elif 'text/plain' in d: out.append(TIME_RE.sub('<t>', ''.join(d['text/plain'])))
    return out

@pytest.mark.parametrize('chapter', CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_in_jupyterlab(lab, chapter):
    before = git_untracked()
    files_before = {p.name for p in lab['work'].iterdir()}
    page = lab['browser'].new_page(viewport={'width': 1400, 'height': 1000})
    page.goto(f"{lab['base']}/lab/tree/{chapter.name}?token={lab['token']}")
    page.wait_for_selector('.jp-Notebook .jp-Cell', state='attached', timeout=60_000)
    wait_kernel_ready(page)
    nb_path = lab['work'] / chapter.name
    run_all(page, nb_path)
    nb = json.loads(nb_path.read_text())
    errors = [(i, o.get('ename'), o.get('evalue')) for i, c in enumerate(nb['cells']) for o in c.get('outputs', [])
              if o['output_type'] == 'error']
    assert not errors, f'{chapter.name}: cells raised errors {errors}'
    assert page.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0
    unexecuted = [i for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' and ''.join(c['source']).strip()
                  and c.get('execution_count') is None]
    assert not unexecuted, f'{chapter.name}: cells {unexecuted} did not run'
    n_png = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
    assert n_png > 0 and page.locator('.jp-RenderedImage img').count() > 0, f'{chapter.name}: no figure appeared'
    if chapter.name.startswith('00_'): page.screenshot(path=str(ROOT / '_docs' / 'screenshot_lab.png'), full_page=False)
    first = fingerprint(nb_path)
    restart_and_run_all(page, nb_path)
    assert fingerprint(nb_path) == first, f'{chapter.name}: a second run gave different numbers or figures'
    page.close()
    new_files = {p.name for p in lab['work'].iterdir()} - files_before - {'.ipynb_checkpoints'}
    assert not new_files, f'{chapter.name} left files next to the notebook: {sorted(new_files)}'
    assert git_untracked() == before, f'{chapter.name} changed files in the repository'
