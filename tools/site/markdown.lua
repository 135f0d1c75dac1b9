-- pandoc Lua filter for the Markdown twin of each page (`<page>.html.md`, tools/build_site.py), run after filter.lua:
-- plain Markdown for a reader that is a program (the module docstrings' `Docs:` links and nbs/llms.txt point here),
-- so the notebook's cell wrappers, anchors and layout spans go, and their content stays.
function Div(div) return div.content end
function Span(span) return span.content end
