"""Write README.md from nbs/index.ipynb (the front page), as `nbdev-readme` does with Quarto, but with pandoc.

Chapter links in the front page point at sibling notebooks (`01_ntk.ipynb`); in README.md, which lives at the root,
they are rewritten to `nbs/01_ntk.ipynb`.
"""
import json, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def main():
    import pypandoc
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    md = '\n\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    with tempfile.NamedTemporaryFile('w', suffix='.md', delete=False) as f: f.write(md)
    out = subprocess.run([pypandoc.get_pandoc_path(), f.name, '-f', 'markdown', '-t', 'gfm', '--wrap=preserve'],
                         check=True, capture_output=True, text=True).stdout
    out = re.sub(r'\]\((\d\d_[\w-]+\.ipynb)\)', r'](nbs/\1)', out)
    out = re.sub(r'\]\(([\w-]+\.html)\)', r'](https://geobook.github.io/geobook/\1)', out)   # pages only the website has
    header = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n'
    (ROOT / 'README.md').write_text(header + out)
    print('wrote', ROOT / 'README.md')

if __name__ == '__main__': main()
