"""Write README.md from nbs/index.ipynb (the front page), as `nbdev-readme` does with Quarto, but with pandoc.

Chapter links in the front page point at sibling notebooks (`01_ntk.ipynb`); in README.md, which lives at the root,
they are rewritten to `nbs/01_ntk.ipynb`. nbdev directives at the top of a markdown cell (`#| export`, which puts the
cell into the package docstring and nbs/llms.txt) are left out.
"""
import json, re, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def main():
    import pypandoc
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    # a markdown cell's leading `#| export` (it puts the cell into the package docstring) is not part of the text
    md = '\n\n'.join(re.sub(r'\A(\s*#\|[^\n]*\n)+', '', ''.join(c['source']))
                     for c in nb['cells'] if c['cell_type'] == 'markdown')
    with tempfile.NamedTemporaryFile('w', suffix='.md', delete=False) as f: f.write(md)
    out = subprocess.run([pypandoc.get_pandoc_path(), f.name, '-f', 'markdown', '-t', 'gfm', '--wrap=preserve'],
                         check=True, capture_output=True, text=True).stdout
    out = re.sub(r'\]\((\d\d_[\w-]+\.ipynb)\)', r'](nbs/\1)', out)
    out = re.sub(r'\]\(([\w-]+\.html)\)', r'](https://geobook.github.io/geobook/\1)', out)   # pages only the website has
    header = '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file -->\n\n'
    (ROOT / 'README.md').write_text(header + out)
    print('wrote', ROOT / 'README.md')

if __name__ == '__main__': main()
