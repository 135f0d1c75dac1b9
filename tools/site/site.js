// geobook's pages (tools/build_site.py): dark/light switch, copy buttons on code, and the search dialog (Pagefind).
// Everything here is an addition: the pages read the same without JavaScript.
(function () {
  'use strict';
  const root = document.documentElement;

  // ---- dark / light: follows the system setting until the reader picks one, which is remembered
  const isDark = () => (root.dataset.theme ||
                        (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light')) === 'dark';
  const label = () => document.querySelectorAll('.theme-toggle').forEach(b => {
    b.textContent = isDark() ? '\u2600' : '\u263e';
    b.setAttribute('aria-pressed', String(isDark()));
  });
  document.querySelectorAll('.theme-toggle').forEach(b => b.addEventListener('click', () => {
    root.dataset.theme = isDark() ? 'light' : 'dark';
    try { localStorage.setItem('geobook-theme', root.dataset.theme); } catch (e) { /* private mode */ }
    label();
  }));
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', label);
  label();

  // ---- a copy button on every code block (not on outputs)
  document.querySelectorAll('main div.sourceCode, main pre:not(.sourceCode)').forEach(block => {
    if (block.closest('.output')) return;
    let box = block;
    if (block.matches('pre')) {                   // a bare <pre>: wrapped, so that the button is not part of its text
      box = document.createElement('div');
      box.className = 'code-block';
      block.replaceWith(box);
      box.appendChild(block);
    }
    const pre = box.querySelector('pre');
    if (!pre) return;
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'copy-button';
    button.textContent = 'Copy';
    button.setAttribute('aria-label', 'Copy the code');
    button.addEventListener('click', async () => {
      const text = pre.innerText.replace(/\n$/, '');
      try { await navigator.clipboard.writeText(text); button.textContent = 'Copied'; }
      catch (e) {                                 // no clipboard access (e.g. a file:// page): select it instead
        const sel = getSelection(), range = document.createRange();
        range.selectNodeContents(pre); sel.removeAllRanges(); sel.addRange(range);
        button.textContent = 'Press Ctrl+C';
      }
      setTimeout(() => { button.textContent = 'Copy'; }, 1600);
    });
    box.classList.add('has-copy');
    box.appendChild(button);
  });

  // ---- search: Pagefind's UI in a dialog; the index is in pagefind/ next to the pages
  const dialog = document.getElementById('search-dialog');
  let ui = null;
  const openSearch = () => {
    if (!dialog) return;
    if (!ui && location.protocol === 'file:') {        // the index is fetched: a page opened from disk cannot
      ui = true;
      document.getElementById('search').innerHTML = '<p class="search-offline">Search reads its index over HTTP. ' +
        'Serve the site, e.g. <code>python -m http.server -d _docs</code>, and open it from there.</p>';
    }
    if (!ui && window.PagefindUI) {
      ui = new PagefindUI({
        element: '#search', showSubResults: true, showImages: false,
        baseUrl: new URL('./', location.href).pathname,   // the site may live in a sub-folder (or be previewed in one)
        translations: { placeholder: 'Search the book' },
      });
    }
    if (!dialog.open) dialog.showModal();
    setTimeout(() => { const input = dialog.querySelector('input'); if (input) input.focus(); }, 0);
  };
  document.querySelectorAll('.search-button').forEach(b => b.addEventListener('click', openSearch));
  if (dialog) {
    dialog.querySelector('.search-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('click', e => { if (e.target === dialog) dialog.close(); });   // a click on the backdrop
  }
  document.addEventListener('keydown', e => {
    if (e.key === '/' && !e.ctrlKey && !e.metaKey && !e.altKey &&
        !(e.target.closest && e.target.closest('input, textarea, [contenteditable]'))) {
      e.preventDefault(); openSearch();
    }
  });
})();
