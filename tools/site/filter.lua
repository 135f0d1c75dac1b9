-- pandoc Lua filter for the book's pages (tools/build_site.py): what Quarto would do with notebook cells.
--  * markdown cells are unwrapped (headings inside cell <div>s would make no sections and no TOC entries)
--  * cells carrying `code-fold` metadata (set from `#| code-fold: true`) become <details> blocks
--  * code cells whose source was hidden (`#| echo: false`) lose their empty code block
--  * notebook bookkeeping attributes (execution_count, cell metadata) are dropped from the HTML
--  * wide tables and display equations scroll horizontally inside the text column (book.css draws the scroll cue)

local function is_code_cell(div)
  return div.classes:includes('cell') and div.classes:includes('code')
end

function Div(div)
  -- markdown cells: their content goes to the top level, so that headings make sections and the table of contents
  if div.classes:includes('cell') and (div.classes:includes('markdown') or div.classes:includes('raw')) then
    return div.content
  end
  if div.classes:includes('cell') then
    local fold = div.attributes['code-fold']
    local summary = div.attributes['code-summary'] or 'Code'
    if summary:sub(1, 1) == '"' then summary = summary:sub(2, -2) end
    div.attributes = {}
    if is_code_cell(div) then
      local kept = pandoc.List()
      for _, b in ipairs(div.content) do
        if not (b.t == 'CodeBlock' and b.text:match('^%s*$')) then kept:insert(b) end
      end
      div.content = kept
      if #kept == 0 then return {} end
      if fold then
        local code, rest = pandoc.List(), pandoc.List()
        for _, b in ipairs(kept) do
          if b.t == 'CodeBlock' then code:insert(b) else rest:insert(b) end
        end
        local open = fold:find('show') and ' open' or ''
        local blocks = pandoc.List({pandoc.RawBlock('html', '<details class="code-fold"' .. open .. '><summary>' ..
                                    summary .. '</summary>')})
        blocks:extend(code)
        blocks:insert(pandoc.RawBlock('html', '</details>'))
        blocks:extend(rest)
        div.content = blocks
      end
    end
    return div
  end
end

function Table(t)
  return pandoc.Div({t}, pandoc.Attr('', {'table-wrap'}))
end

-- show_doc blocks (wrapped by build_site.py in <div class="api-doc">): the function's heading is set as code, so it
-- reads as an API entry in the text and in the table of contents
function Blocks(blocks)
  local in_api = false
  for i, b in ipairs(blocks) do
    if b.t == 'RawBlock' and b.format == 'html' then
      if b.text:match('^<div class="api%-doc">') then in_api = true
      elseif b.text:match('^</div>') then in_api = false end
    elseif in_api and b.t == 'Header' then
      local text = pandoc.utils.stringify(b.content)
      if text:match('^[%w_%.]+$') then
        b.content = {pandoc.Code(text)}
        b.classes:insert('api-name')
        blocks[i] = b
      end
      in_api = false
    end
  end
  return blocks
end

-- old TeX font switches that MathJax knows but pandoc's TeX-to-MathML converter does not: {\rm SP} -> \mathrm{SP}
local switches = {rm = 'mathrm', bf = 'mathbf', it = 'mathit', sf = 'mathsf', tt = 'mathtt', cal = 'mathcal'}
function Math(m)
  local text = m.text
  for old, new in pairs(switches) do
    text = text:gsub('{%s*\\' .. old .. '%s+([^{}]*)}', '{\\' .. new .. '{%1}}')
    text = text:gsub('{%s*\\' .. old .. '({[^{}]*})}', '{\\' .. new .. '%1}')
  end
  m.text = text
  if m.mathtype == 'DisplayMath' then return pandoc.Span({m}, pandoc.Attr('', {'display-math'})) end
  -- a long inline formula: on a phone it may be wider than the screen, and MathML does not break lines (book.css
  -- lets it scroll there)
  if #text >= 20 then return pandoc.Span({m}, pandoc.Attr('', {'math-long'})) end
  return m
end

-- pandoc's ipynb reader makes each markdown cell's heading identifiers on its own, so two cells with the same heading
-- get the same id: number the repeats (`-1`, `-2`, ...) as pandoc does within one document. API headings keep the ids
-- build_site.py gave them (nbdev's links point there).
function Pandoc(doc)
  local used = {}
  doc.blocks:walk({Header = function(h)
    if h.classes:includes('api-name') and h.identifier ~= '' then used[h.identifier] = true end
  end})
  doc.blocks = doc.blocks:walk({Header = function(h)
    if h.classes:includes('api-name') or h.identifier == '' then return nil end
    local id = h.identifier
    if used[id] then
      local k = 1
      while used[id .. '-' .. k] do k = k + 1 end
      h.identifier = id .. '-' .. k
    end
    used[h.identifier] = true
    return h
  end})
  return doc
end
