-- Drives Neovim inside tmux for the README's screenshots (tests/test_nvim.py
-- test_screenshots_from_a_terminal): ghost text, a review finding and its quick fix. The screen is
-- captured with `tmux capture-pane -e` right after a redraw and written to $PHI_SCREENS_DIR; the
-- code-action menu (vim.ui.select's inputlist, which blocks) is captured and answered by the test
-- through tmux. What was seen goes to $PHI_SCREENS_DIR/result.json.

local api = vim.api
local phi = require("phi_lsp")
local dir = assert(os.getenv("PHI_SCREENS_DIR"))
local workspace = assert(os.getenv("PHI_NVIM_WORKSPACE"))
local results = { captures = {} }
local finished = false

local function finish()
  if finished then
    return
  end
  finished = true
  local file = assert(io.open(dir .. "/result.json", "w"))
  file:write(vim.json.encode(results))
  file:close()
  vim.cmd("qall!")
end

local co
local function resume()
  local ok, err = coroutine.resume(co)
  if not ok then
    results.fatal = debug.traceback(co, err)
    finish()
  end
end

local function tick(ms)
  vim.defer_fn(resume, ms or 20)
  coroutine.yield()
end

local function wait_for(what, timeout_ms, cond)
  local limit = vim.uv.now() + timeout_ms
  while true do
    local value = cond()
    if value then
      return value
    end
    if vim.uv.now() > limit then
      error(("timed out after %d ms waiting for %s"):format(timeout_ms, what), 0)
    end
    tick()
  end
end

local function feed(keys)
  api.nvim_feedkeys(vim.keycode(keys), "mt", false)
end

--- The screen as the terminal shows it now, with the cursor's cell.
local function capture(name)
  vim.cmd.echo('""') -- an empty command line
  vim.cmd("redraw!")
  tick(300)
  vim.cmd("redraw")
  local pane = assert(os.getenv("TMUX_PANE"))
  local text = vim.fn.system({ "tmux", "capture-pane", "-e", "-p", "-t", pane })
  local cursor = vim.fn.system({ "tmux", "display-message", "-p", "-t", pane, "#{cursor_x},#{cursor_y}" })
  local file = assert(io.open(dir .. "/" .. name .. ".ans", "w"))
  file:write(text)
  file:close()
  results.captures[name] = vim.trim(cursor)
end

co = coroutine.create(function()
  -- 1. Ghost text at the end of `    return`.
  vim.cmd.edit("example.py") -- relative: the statusline shows the short name
  local bufnr = api.nvim_get_current_buf()
  wait_for("ready", 60000, function()
    local s = phi.status(bufnr)
    return s and s.state == "ready"
  end)
  local shown
  api.nvim_create_autocmd("User", {
    pattern = "PhiSuggestion",
    callback = function(ev)
      shown = ev.data
    end,
  })
  api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
  feed("A")
  wait_for("ghost text", 90000, function()
    return shown and require("phi_lsp.suggest").current(bufnr)
  end)
  results.ghost = shown.text
  capture("ghost")
  feed("<Esc>")
  tick(200)

  -- 2. A review finding: save buggy.py (the backend answers review prompts with a finding).
  vim.cmd.edit("buggy.py")
  local buggy = api.nvim_get_current_buf()
  wait_for("the client on buggy.py", 30000, function()
    return #phi.clients(buggy) > 0
  end)
  vim.cmd.write()
  local diagnostics = wait_for("phi-review diagnostics", 150000, function()
    local list = vim.diagnostic.get(buggy)
    return #list > 0 and list or nil
  end)
  results.diagnostics = vim.tbl_map(function(d)
    return { lnum = d.lnum, message = d.message, source = d.source }
  end, diagnostics)
  local lines = api.nvim_buf_get_lines(buggy, 0, -1, false)
  local row
  for i, line in ipairs(lines) do
    if line == "    return total / len(values)" then
      row = i
    end
  end
  api.nvim_win_set_cursor(0, { row, 11 })
  vim.cmd.echo('""') -- not the "written" message
  capture("finding")
  -- The code actions: the test captures the menu and picks 1.
  results.menu_wanted = true
  local f = assert(io.open(dir .. "/menu.wanted", "w"))
  f:close()
  vim.lsp.buf.code_action()
  local fixed = wait_for("the quick fix to apply", 60000, function()
    local line = api.nvim_buf_get_lines(buggy, row - 1, row, false)[1]
    return line ~= "    return total / len(values)" and line or nil
  end)
  results.fixed_line = fixed
  capture("fixed")
  finish()
end)

vim.defer_fn(function()
  if not finished then
    results.fatal = "took longer than 300 s"
    finish()
  end
end, 300000)
vim.schedule(resume)
