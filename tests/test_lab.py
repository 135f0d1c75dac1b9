"""Every chapter run the way a student runs it: JupyterLab in headless Chromium, Run > Run All Cells, twice.

A JupyterLab server is started as `make lab` starts it (the project's kernel `geobook` as the default) on a free
loopback port with a random token, on a temporary copy of nbs/ holding the notebooks exactly as committed: no cell
removed, no output cleared, and none of the switches the test suite sets (GEOBOOK_TEST_FLAGS, GEOBOOK_RUN_LONG,
GEOBOOK_NO_PROGRESS) in the kernel's environment — so each chapter's `RUN_LONG = run_long()` is off, as for a student,
and its long cells skip themselves. For each chapter the test opens the notebook (alone, in a fresh workspace), runs
all cells through the menu, waits for the run to end, saves, and checks that the notebook ran on the `geobook` kernel
(the kernelspec's interpreter, this project's environment), that no cell has an error output, that no cell wrote to
stderr (a warning, the pink box a student sees), that every `slow` cell obeyed RUN_LONG, and that the chapter's
figures appear; then it clears the outputs, restarts the kernel, runs all again and checks the numbers (text outputs
and figures) are the same. It also checks that no chapter leaves files behind, in its folder or in the repository.
Screenshots (one executed chapter, and any failure) go to a temporary folder that the test prints.

What the test reads, it reads where it is reliable: the notebook's kernel and its state from the server's REST API, the
kernel's process from /proc (a crashed kernel that Jupyter's restarter replaced has a new process), the outputs from the
saved file (waiting for the save to land), the prompts from a notebook rendered whole (windowingMode 'none'). A kernel
that dies or restarts during a run, or a dialog JupyterLab puts up, fails the test at once with the server log's tail
(the kernel's own stderr included) and a screenshot.

This takes several minutes, so it is marked `slow` and runs in `make test-all` (alone: `make test-lab`).
"""
import hashlib, json, os, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from notebooks import ROOT, cell_flags, chapters, read_nb, stderr_outputs

pytestmark = pytest.mark.slow
CHAPTERS = [p for p in chapters() if p.name != 'index.ipynb']
KERNEL = 'geobook'              # the kernel `make lab` installs and the notebooks name
SKIPPED_LONG = 'long cell skipped'   # what a `slow` cell prints when RUN_LONG is off (geobook.book.long_cell)
# what the test suite sets and a student's JupyterLab does not have
SUITE_ONLY_ENV = ('GEOBOOK_TEST_FLAGS', 'GEOBOOK_RUN_LONG', 'GEOBOOK_NO_PROGRESS')
TIME_RE = re.compile(r'\d+(\.\d+)?\s*(s|ms|µs|us|sec|seconds|it/s|s/it)\b')

def chromium_path() -> str:
    path = os.environ.get('GEOBOOK_CHROMIUM') or shutil.which('chromium') or shutil.which('chromium-browser')
    if not path: pytest.fail("Chromium not found: install Debian's `chromium` (make test does) or set GEOBOOK_CHROMIUM")
    return path

def free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def student_copy(src: Path, dst: Path):
    "Copy notebook `src` to `dst` byte for byte: what a student opens is the committed notebook."
    shutil.copyfile(src, dst)

def git_untracked() -> dict:
    "Files git reports as new or modified in the repository, each with its modification time."
    out = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=ROOT, capture_output=True, text=True)
    def mtime(line):
        try: return (ROOT / line[3:].split(' -> ')[-1].strip('"')).stat().st_mtime_ns
        except OSError: return None
    return {line: mtime(line) for line in out.stdout.splitlines()}

def repo_changes(before: dict, after: dict) -> list:
    "Entries new in `git status`, or whose file was written again, since `before` (a commit in between only removes)."
    return sorted(line for line, t in after.items() if before.get(line, -1) != t)

# JupyterLab settings for a reproducible session: every cell in the DOM (no virtual rendering, so the prompts read are
# all the notebook's prompts), no autosave (the test saves, and waits for that save), no news or update pop-ups.
SETTINGS = {'@jupyterlab/notebook-extension/tracker': {'windowingMode': 'none'},
            '@jupyterlab/docmanager-extension/plugin': {'autosave': False},
            '@jupyterlab/apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False}}
# What the server log says when a kernel dies and Jupyter's restarter replaces it (a crash, not a restart asked for).
RESTART_RE = re.compile(r'KernelRestarter|kernel \S+ restarted|restarted failed|died, removing', re.I)

@pytest.fixture(scope='module')
def lab(tmp_path_factory, shots):
    root = tmp_path_factory.mktemp('lab')
    work, state = root / 'nbs', root / 'state'
    work.mkdir(); state.mkdir()
    for nb in CHAPTERS: student_copy(nb, work / nb.name)
    # as in the repository, next to nbs/ (the chapters read results through geobook.book.load_benchmark, which finds
    # them beside the package; the copy keeps the layout the same for anything that looks relative to the notebook)
    shutil.copytree(ROOT / 'benchmarks' / 'results', root / 'benchmarks' / 'results')
    for name, values in SETTINGS.items():
        f = state / 'settings' / f'{name}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in SUITE_ONLY_ENV}
    env.update({'JUPYTERLAB_SETTINGS_DIR': str(state / 'settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(state / 'ws'),
                'JUPYTER_RUNTIME_DIR': str(state / 'runtime')})
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}', '--LabApp.news_url=',
           f'--MultiKernelManager.default_kernel_name={KERNEL}',      # as `make lab`
           '--ServerApp.port_retries=0'] + (['--allow-root'] if os.geteuid() == 0 else [])
    log = state / 'lab.log'   # the server's log, with its kernels' stdout and stderr (a crashing kernel's last words)
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=open(log, 'w'), stderr=subprocess.STDOUT)
    base = f'http://127.0.0.1:{port}'
    for _ in range(120):
        if proc.poll() is not None: break
        try:
            urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=1); break
        except OSError: time.sleep(0.5)
    else:
        proc.kill(); pytest.fail(f"JupyterLab did not start: {log.read_text()[-2000:]}")
    if proc.poll() is not None: pytest.fail(f"JupyterLab exited: {log.read_text()[-2000:]}")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=[
            '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
            '--disable-sync', '--no-first-run', '--disable-quic'])
        yield dict(base=base, token=token, work=work, browser=browser, log=log, shots=shots)
        browser.close()
    proc.terminate(); proc.wait(timeout=30)

def api(lab, path: str, method: str = 'GET'):
    req = urllib.request.Request(lab['base'] + path, method=method, headers={'Authorization': f"token {lab['token']}"})
    with urllib.request.urlopen(req, timeout=30) as r: body = r.read()
    return json.loads(body) if body else None

def kernel_pid(lab, kernel_id: str):
    "The process id of kernel `kernel_id` (the process started with its connection file), None while there is none."
    conn = f'kernel-{kernel_id}.json'.encode()
    for d in Path('/proc').iterdir():
        if not d.name.isdigit(): continue
        try: cmdline = (d / 'cmdline').read_bytes()
        except OSError: continue
        if conn in cmdline and b'ipykernel' in cmdline: return int(d.name)
    return None

def log_size(lab) -> int: return lab['log'].stat().st_size

def log_since(lab, offset: int) -> str: return lab['log'].read_bytes()[offset:].decode(errors='replace')

class Watch:
    """One notebook's page and kernel. `check` fails loudly when anything a student would notice goes wrong while it
    runs: the kernel process died or was replaced (a crash the server's restarter papered over), the server logged a
    restart, or JupyterLab put up a dialog (e.g. 'Kernel Restarting', 'Select Kernel')."""
    def __init__(self, lab, page, name):
        self.lab, self.page, self.name = lab, page, name
        sessions = [s for s in api(lab, '/api/sessions') if s['path'] == name]
        assert len(sessions) == 1, f'{name}: expected one kernel session, the server has {sessions}'
        self.session, self.kernel = sessions[0]['id'], sessions[0]['kernel']['id']
        self.pid, self.log_from = kernel_pid(lab, self.kernel), log_size(lab)
        assert self.pid, f"{name}: no process for kernel {self.kernel}"

    def fail(self, what: str, settle_s: float = 0):
        shot = self.lab['shots'] / f'failure_{Path(self.name).stem}.png'
        self.page.screenshot(path=str(shot))
        time.sleep(settle_s)    # the server's restarter polls every 3 s: let it log, with the dead kernel's last words
        tail = '\n'.join(log_since(self.lab, self.log_from).splitlines()[-40:])
        raise AssertionError(f"{self.name}: {what}\n(screenshot: {shot}; server log "
                             f"{self.lab['log']} since the run began, last lines:)\n{tail}")

    def check(self, during: str):
        problems = []
        pid = kernel_pid(self.lab, self.kernel)
        if pid != self.pid:
            problems.append(f'kernel process {self.pid} ' + (f'was replaced by {pid}' if pid else 'is gone'))
        problems += [l.strip() for l in log_since(self.lab, self.log_from).splitlines() if RESTART_RE.search(l)]
        sessions = [s for s in api(self.lab, '/api/sessions') if s['path'] == self.name]
        if [s['kernel']['id'] for s in sessions] != [self.kernel]:
            problems.append(f"the notebook's kernel changed: {self.kernel} -> {[s['kernel'] for s in sessions]}")
        elif sessions[0]['kernel']['execution_state'] in ('dead', 'restarting', 'autorestarting'):
            problems.append(f"kernel state {sessions[0]['kernel']['execution_state']}")
        if problems: self.fail(f'the kernel died or restarted during {during}: ' + '; '.join(problems), settle_s=5)
        dialogs = self.page.locator('.jp-Dialog')
        if dialogs.count():
            self.fail(f'JupyterLab showed a dialog during {during}: {" | ".join(dialogs.all_inner_texts())!r}')

    def state(self) -> str:
        return api(self.lab, f'/api/kernels/{self.kernel}')['execution_state']

def prompts(page) -> list:
    return page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt').all_text_contents()

def wait_done(watch: Watch, n_code: int, n_run: int, during: str, timeout_s: float, start_s: float = 120):
    """Wait until the run started from the menu is over: all `n_code` code cells are on the page, none is queued or
    running ([*]), and the kernel has been idle (REST API) for three polls in a row after the run was seen on the page
    (a cell queued, or all `n_run` cells numbered). Checks all along that the kernel is the same process."""
    t0, idle, seen, ps, state = time.time(), 0, False, [], None
    while time.time() < t0 + timeout_s:
        watch.check(during)
        ps, state = prompts(watch.page), watch.state()
        busy, numbered = any('*' in p for p in ps), sum(bool(re.search(r'\[\d+\]', p)) for p in ps)
        seen = seen or busy or numbered >= n_run
        if not seen and time.time() > t0 + start_s: watch.fail(f'{during} did not start: kernel {state}, prompts {ps}')
        idle = idle + 1 if seen and not busy and state == 'idle' and len(ps) == n_code else 0
        if idle >= 3: return watch.check(during)
        time.sleep(1)
    watch.fail(f'{during} not finished after {timeout_s:.0f} s: kernel {state}, prompts {ps}')

def save(watch: Watch, nb_path: Path, timeout_s=90):
    "Save through the UI (Ctrl+S) and wait until the file on disk is newer and JupyterLab shows no unsaved changes."
    before = nb_path.stat().st_mtime_ns
    watch.page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook').first.click(position={'x': 5, 'y': 5})
    deadline, pressed = time.time() + timeout_s, 0.0
    while time.time() < deadline:
        if time.time() - pressed > 20: watch.page.keyboard.press('Control+s'); pressed = time.time()
        time.sleep(1)
        watch.check('saving')
        dirty = watch.page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current.jp-mod-dirty').count()
        if nb_path.stat().st_mtime_ns != before and not dirty:
            try: json.loads(nb_path.read_text()); return
            except (json.JSONDecodeError, OSError): pass
    watch.fail('the notebook was not saved')

def menu(page, top: str, item: str):
    page.locator('.lm-MenuBar-itemLabel', has_text=re.compile(f'^{top}$')).first.click()
    page.locator('.lm-Menu-itemLabel', has_text=re.compile(f'^{re.escape(item)}(…|\\.\\.\\.)?$')).first.click()

def open_notebook(lab, page, name: str):
    """Open notebook `name` in `page`, on a fresh workspace holding only it (JupyterLab's default workspace would reopen
    every chapter opened before, each tab with its kernel still running), and wait until its kernel is idle."""
    ws = re.sub(r'\W', '-', Path(name).stem)
    page.goto(f"{lab['base']}/lab/workspaces/{ws}/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell', state='attached', timeout=120_000)
    deadline = time.time() + 120
    while time.time() < deadline:
        # a notebook whose kernel session is not ready when it opens may ask which kernel to use: take the default
        dialog = page.locator('.jp-Dialog', has_text='Select Kernel')
        if dialog.count(): dialog.locator('.jp-Dialog-button.jp-mod-accept').first.click()
        status = ' '.join(page.locator('.jp-StatusBar-Widget').all_text_contents())
        if re.search(r'\|\s*Idle', status) and any(s['path'] == name for s in api(lab, '/api/sessions')): break
        time.sleep(0.5)
    else: raise AssertionError(f'{name}: the kernel did not become ready')
    tabs = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab').all_text_contents()
    assert tabs == [name], f'{name}: expected only this notebook open, the page has tabs {tabs}'

def code_cells(nb_path: Path):
    "(all code cells, the non-empty ones) of the notebook on disk"
    cells = [c for c in json.loads(nb_path.read_text())['cells'] if c['cell_type'] == 'code']
    return cells, [c for c in cells if ''.join(c['source']).strip()]

def check_counts(watch: Watch, nb_path: Path, during: str):
    """A run of every cell on a fresh kernel numbers the cells 1, 2, 3, ... in order; anything else means the kernel
    restarted (counts start again at 1) or cells ran twice or out of order."""
    counts = [c.get('execution_count') for c in code_cells(nb_path)[1]]
    if counts != list(range(1, len(counts) + 1)):
        watch.fail(f'{during}: execution counts are not 1..{len(counts)} (kernel restarted mid-run?): {counts}')

def run_all(watch: Watch, nb_path, timeout_s=float(os.environ.get("GEOBOOK_LAB_TIMEOUT", 600))):
    cells, run = code_cells(nb_path)
    menu(watch.page, 'Run', 'Run All Cells')
    wait_done(watch, len(cells), len(run), 'Run All Cells', timeout_s)
    save(watch, nb_path)

def restart_and_run_all(watch: Watch, nb_path, timeout_s=float(os.environ.get("GEOBOOK_LAB_TIMEOUT", 600))):
    """Kernel > Restart Kernel and Run All Cells, after clearing the outputs (Edit > Clear Outputs of All Cells) so that
    the prompts and the saved file can only show this run's results."""
    page, cells, run = watch.page, *code_cells(nb_path)
    menu(page, 'Edit', 'Clear Outputs of All Cells')
    numbered = [p for p in prompts(page) if re.search(r'\d', p)]
    assert not numbered, f'{watch.name}: prompts still numbered after clearing the outputs: {numbered}'
    menu(page, 'Kernel', 'Restart Kernel and Run All Cells')
    dialog = page.locator('.jp-Dialog')
    dialog.wait_for(timeout=30_000)
    assert 'Restart' in dialog.inner_text(), f'{watch.name}: unexpected dialog {dialog.inner_text()!r}'
    dialog.locator('.jp-Dialog-button.jp-mod-accept').first.click()
    dialog.wait_for(state='detached', timeout=30_000)
    deadline = time.time() + 120                 # the restart asked for: a new kernel process under the same kernel id
    while (pid := kernel_pid(watch.lab, watch.kernel)) in (None, watch.pid):
        if time.time() > deadline: watch.fail(f'the kernel was not restarted (process {watch.pid} still there)')
        time.sleep(0.5)
    watch.pid, watch.log_from = pid, log_size(watch.lab)
    wait_done(watch, len(cells), len(run), 'Restart Kernel and Run All Cells', timeout_s)
    save(watch, nb_path)

MEASURED = 'vary between runs'   # cells that measure this machine (time, memory) say so in a comment: not compared

WIDGET = 'application/vnd.jupyter.widget-view+json'   # a progress bar (ipywidgets): its model id differs per run

def fingerprint(nb_path: Path) -> list:
    """The numbers a reader sees: stdout and results (timings masked) and a hash of each figure, as (cell index, output)
    pairs, except in cells marked as measurements of the machine (a comment containing 'vary between runs') and
    progress-bar widgets."""
    out = []
    for i, c in enumerate(json.loads(nb_path.read_text())['cells']):
        if MEASURED in ''.join(c.get('source', '')): continue
        for o in c.get('outputs', []):
            if o['output_type'] == 'stream' and o['name'] == 'stdout': out.append((i, TIME_RE.sub('<t>', ''.join(o['text']))))
            elif o['output_type'] in ('execute_result', 'display_data'):
                d = o['data']
                if WIDGET in d: continue
                if 'image/png' in d: out.append((i, 'png:' + hashlib.sha256(''.join(d['image/png']).encode()).hexdigest()))
                elif 'text/plain' in d: out.append((i, TIME_RE.sub('<t>', ''.join(d['text/plain']))))
    return out

def differences(first: list, second: list) -> str:
    "The cells whose outputs differ between two fingerprints, each with its first and second outputs (shortened)."
    cells = sorted({i for i, _ in first} | {i for i, _ in second})
    short = lambda outs: [o if len(o) < 400 else o[:400] + '...' for o in outs]
    return '; '.join(f'cell {i}: {short([o for j, o in first if j == i])} then {short([o for j, o in second if j == i])}'
                     for i in cells if [o for j, o in first if j == i] != [o for j, o in second if j == i])

def check_kernel(watch: Watch, nb_path: Path):
    """The notebook runs on the `geobook` kernel it names, whose interpreter is this project's environment (the one
    that has geobook), not some other `python3`."""
    named = (read_nb(nb_path)['metadata'].get('kernelspec') or {}).get('name')
    assert named == KERNEL, f'{watch.name}: the notebook names kernel {named!r}, `make lab` installs {KERNEL!r}'
    session = next(s for s in api(watch.lab, '/api/sessions') if s['path'] == watch.name)
    assert session['kernel']['name'] == KERNEL, f"{watch.name}: ran on kernel {session['kernel']['name']!r}"
    spec = api(watch.lab, '/api/kernelspecs')['kernelspecs'][KERNEL]['spec']
    exe = Path(spec['argv'][0])
    assert exe.parent == Path(sys.executable).parent, \
        f'{watch.name}: the {KERNEL!r} kernel runs {exe}, not this project\'s environment ({Path(sys.executable).parent})'
    cmd = (Path('/proc') / str(watch.pid) / 'cmdline').read_bytes().split(b'\0')
    assert cmd[0].decode() == str(exe), f'{watch.name}: the kernel process runs {cmd[0]!r}, its kernelspec says {exe}'

def check_run(watch: Watch, nb_path: Path, page, during: str):
    "What a student would see after a run: no error, nothing on stderr, every cell run, long cells skipped."
    name = watch.name
    nb = json.loads(nb_path.read_text())
    errors = [(i, o.get('ename'), o.get('evalue')) for i, c in enumerate(nb['cells']) for o in c.get('outputs', [])
              if o['output_type'] == 'error']
    assert not errors, f'{name} ({during}): cells raised errors {errors}'
    assert page.locator('[data-mime-type="application/vnd.jupyter.error"]').count() == 0
    stderr = stderr_outputs(nb)
    assert not stderr, f'{name} ({during}): cells wrote to stderr (a pink box in JupyterLab): {stderr}'
    assert page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').count() == 0, f'{name}: stderr on the page'
    unexecuted = [i for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code' and ''.join(c['source']).strip()
                  and c.get('execution_count') is None]
    assert not unexecuted, f'{name} ({during}): cells {unexecuted} did not run'
    ran_long = [i for i, c in enumerate(nb['cells']) if 'slow' in cell_flags(c) and not any(
        SKIPPED_LONG in ''.join(o.get('text', '')) for o in c.get('outputs', []) if o['output_type'] == 'stream')]
    assert not ran_long, (f'{name} ({during}): `slow` cells {ran_long} did not skip themselves with RUN_LONG off (their '
                          'body belongs under `if long_cell(RUN_LONG):`)')

@pytest.mark.parametrize('chapter', CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_in_jupyterlab(lab, chapter):
    before = git_untracked()
    files_before = {p.name for p in lab['work'].iterdir()}
    nb_path = lab['work'] / chapter.name
    page = lab['browser'].new_page(viewport={'width': 1400, 'height': 1000})
    try:
        open_notebook(lab, page, chapter.name)
        watch = Watch(lab, page, chapter.name)
        check_kernel(watch, nb_path)
        run_all(watch, nb_path)
        check_run(watch, nb_path, page, 'Run All Cells')
        check_counts(watch, nb_path, 'Run All Cells')
        nb = json.loads(nb_path.read_text())
        n_png = sum('image/png' in o.get('data', {}) for c in nb['cells'] for o in c.get('outputs', []))
        # the figures of the committed notebook's default cells (not its `slow` ones, which a student skips) reappear
        want = sum('image/png' in o.get('data', {}) for c in read_nb(chapter)['cells'] if 'slow' not in cell_flags(c)
                   for o in c.get('outputs', []))
        assert n_png >= want, f'{chapter.name}: {n_png} figures after Run All, the committed notebook has {want}'
        if want: assert page.locator('.jp-RenderedImage img').count() > 0, f'{chapter.name}: no figure on the page'
        if chapter.name.startswith('00_'):     # for a person to look at: executed cells around the first figure
            page.locator('.jp-RenderedImage img').first.scroll_into_view_if_needed()
            page.screenshot(path=str(lab['shots'] / 'lab.png'), full_page=False)
        first = fingerprint(nb_path)
        restart_and_run_all(watch, nb_path)
        check_run(watch, nb_path, page, 'Restart Kernel and Run All Cells')
        check_counts(watch, nb_path, 'Restart Kernel and Run All Cells')
        second = fingerprint(nb_path)
        assert second == first, (f'{chapter.name}: a second run gave different numbers or figures in '
                                 f'{differences(first, second)}')
    finally:
        page.close()
        for s in api(lab, '/api/sessions'):     # shut the kernel down: nothing goes on running behind the next chapter
            if s['path'] == chapter.name: api(lab, f"/api/sessions/{s['id']}", 'DELETE')
    new_files = {p.name for p in lab['work'].iterdir()} - files_before - {'.ipynb_checkpoints'}
    assert not new_files, f'{chapter.name} left files next to the notebook: {sorted(new_files)}'
    changed = repo_changes(before, git_untracked())
    assert not changed, f'{chapter.name} changed files in the repository (or someone edited them meanwhile): {changed}'
