-- Drives a headless Neovim through the phi_lsp plugin like a user would, and writes what it saw
-- to $PHI_NVIM_RESULT as JSON (read by tests/test_nvim.py). Every wait is bounded; a step that
-- fails records its error and the next step still runs.
--
-- The steps run in a coroutine that yields to Neovim's main loop between polls, so that typed
-- keys (insert mode, mappings), LSP messages and autocommands are processed as in a real session.

local api = vim.api
local phi = require("phi_lsp")

local out_path = assert(os.getenv("PHI_NVIM_RESULT"), "PHI_NVIM_RESULT is not set")
local workspace = assert(os.getenv("PHI_NVIM_WORKSPACE"), "PHI_NVIM_WORKSPACE is not set")
local deadline_ms = tonumber(os.getenv("PHI_NVIM_DEADLINE_MS") or "") or 480000

local results = { steps = {}, notifications = {}, publishes = {}, events = {}, inline_calls = {} }

-- PHI_NVIM_SCENARIO=inline: Neovim 0.12's vim.lsp.inline_completion, stood in for by a recorder
-- (this Neovim is 0.11). Showing the text is Neovim's own business; what is checked is that the
-- plugin detects the feature and hands the buffer and the accept key to it.
local scenario = os.getenv("PHI_NVIM_SCENARIO") or "completion"
if scenario == "inline" then
  vim.lsp.inline_completion = {
    enable = function(enable, filter)
      table.insert(results.inline_calls, { fn = "enable", enable = enable, filter = filter })
    end,
    get = function(opts)
      table.insert(results.inline_calls, { fn = "get", opts = opts })
      return true
    end,
    select = function(opts)
      table.insert(results.inline_calls, { fn = "select", opts = opts })
    end,
  }
end
local started = vim.uv.now()

-- What the user would have seen as messages.
local original_notify = vim.notify
vim.notify = function(msg, level, opts)
  table.insert(results.notifications, { message = tostring(msg), level = level })
  return original_notify(msg, level, opts)
end

-- What the server said with window/showMessage.
results.show_messages = {}
local show_message = vim.lsp.handlers["window/showMessage"]
vim.lsp.handlers["window/showMessage"] = function(err, params, ctx, config)
  table.insert(results.show_messages, { type = params.type, message = params.message })
  return show_message(err, params, ctx, config)
end

-- Every publishDiagnostics, as it arrives.
local publish = vim.lsp.handlers["textDocument/publishDiagnostics"]
vim.lsp.handlers["textDocument/publishDiagnostics"] = function(err, params, ctx, config)
  local result = publish(err, params, ctx, config)
  table.insert(results.publishes, {
    uri = params.uri,
    version = params.version,
    diagnostics = params.diagnostics,
    at_ms = vim.uv.now() - started,
  })
  return result
end

for _, pattern in ipairs({ "PhiSuggestion", "PhiAccept", "PhiPartialAccept", "PhiStatus" }) do
  api.nvim_create_autocmd("User", {
    pattern = pattern,
    callback = function(ev)
      local data = vim.deepcopy(ev.data or {})
      table.insert(results.events, { event = pattern, data = data, at_ms = vim.uv.now() - started })
    end,
  })
end

local finished = false
local function finish()
  if finished then
    return
  end
  finished = true
  results.elapsed_ms = vim.uv.now() - started
  results.messages = vim.fn.execute("messages")
  local file = assert(io.open(out_path, "w"))
  file:write(vim.json.encode(results))
  file:close()
  vim.cmd("qall!")
end

local co
local function resume()
  if finished then
    return
  end
  local ok, err = coroutine.resume(co)
  if not ok then
    results.fatal = debug.traceback(co, err)
    finish()
  end
end

-- Yield to the main loop for one poll interval.
local function tick()
  vim.defer_fn(resume, 20)
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

-- PHI_NVIM_STEPS=attach,ghost_text runs only those steps (while developing).
local only = os.getenv("PHI_NVIM_STEPS")

local function step(name, fn)
  if only and only ~= "" and not vim.list_contains(vim.split(only, ","), name) then
    return
  end
  local record = { ok = false }
  results.steps[name] = record
  local t0 = vim.uv.now()
  local ok, err = pcall(fn, record)
  record.ok = ok
  if not ok then
    record.error = tostring(err)
  end
  record.ms = vim.uv.now() - t0
end

local function feed(keys)
  api.nvim_feedkeys(vim.keycode(keys), "mt", false)
end

local function to_normal_mode()
  feed("<Esc>")
  wait_for("normal mode", 5000, function()
    return api.nvim_get_mode().mode == "n"
  end)
end

local function line(n)
  return api.nvim_buf_get_lines(0, n - 1, n, false)[1]
end

local function events_of(name)
  return vim.tbl_filter(function(e)
    return e.event == name
  end, results.events)
end

local function publishes_for(uri)
  return vim.tbl_filter(function(p)
    return p.uri == uri
  end, results.publishes)
end

local bufnr, client, uri
local completion_requests = 0

local function attach_step()
  step("attach", function(r)
    vim.cmd.edit(vim.fs.joinpath(workspace, "example.py"))
    bufnr = api.nvim_get_current_buf()
    uri = vim.uri_from_bufnr(bufnr)
    client = wait_for("the phi_lsp client to attach", 60000, function()
      local c = phi.clients(bufnr)[1]
      return c and c.initialized and c or nil
    end)
    r.name = client.name
    r.root_dir = client.root_dir
    r.offset_encoding = client.offset_encoding
    r.server_info = client.server_info
    r.filetype = vim.bo[bufnr].filetype
    local caps = client.server_capabilities or {}
    r.completion_provider = caps.completionProvider ~= nil
    r.inline_completion_provider = caps.inlineCompletionProvider ~= nil
    r.commands = vim.tbl_get(caps, "executeCommandProvider", "commands") or {}
    r.suggestion_mode = phi.suggestion_mode(bufnr)
    r.init_options = client.config.init_options
    r.settings = client.settings
  end)
end

local function main_inline()
  attach_step()
  step("inline", function(r)
    r.mode = phi.suggestion_mode(bufnr)
    local text = line(1)
    client:request("textDocument/inlineCompletion", {
      textDocument = { uri = uri },
      position = { line = 0, character = #text },
      context = { triggerKind = 1 },
    }, function(err, result)
      r.answer = { err = err or vim.NIL, result = result or vim.NIL }
    end, bufnr)
    local answer = wait_for("the textDocument/inlineCompletion answer", 60000, function()
      return r.answer
    end)
    if answer.err ~= vim.NIL then
      error("inline completion failed: " .. vim.inspect(answer.err), 0)
    end
    r.items = type(answer.result) == "table" and (answer.result.items or answer.result) or {}
    api.nvim_win_set_cursor(0, { 1, 0 })
    feed("A")
    wait_for("insert mode", 5000, function()
      return api.nvim_get_mode().mode == "i"
    end)
    feed(phi.options.keymaps.accept)
    wait_for("the accept key to call vim.lsp.inline_completion.get()", 5000, function()
      return #vim.tbl_filter(function(c)
        return c.fn == "get"
      end, results.inline_calls) > 0
    end)
    r.ghost_extmarks = #api.nvim_buf_get_extmarks(bufnr, require("phi_lsp.suggest").namespace, 0, -1, {})
    r.line_after = line(1)
    to_normal_mode()
  end)
end

local function main()
  attach_step()
  -- Count the completion requests the client sends from here on.
  local request = client.request
  client.request = function(self, method, ...)
    if method == "textDocument/completion" then
      completion_requests = completion_requests + 1
    end
    return request(self, method, ...)
  end

  step("status", function(r)
    local status = wait_for("a phi/status notification saying ready", 30000, function()
      local s = phi.status(bufnr)
      return s and s.state == "ready" and s or nil
    end)
    r.status = status
    r.statusline = phi.statusline()
  end)

  step("completion_request", function(r)
    -- The request Neovim's client sends for the end of line 1, answered by the real model.
    local text = line(1)
    client:request("textDocument/completion", {
      textDocument = { uri = uri },
      position = { line = 0, character = #text },
      context = { triggerKind = 1 },
    }, function(err, result)
      r.answer = { err = err or vim.NIL, result = result or vim.NIL }
    end, bufnr)
    local answer = wait_for("the textDocument/completion answer", 60000, function()
      return r.answer
    end)
    r.line = text
    if answer.err ~= vim.NIL then
      error("completion failed: " .. vim.inspect(answer.err), 0)
    end
    r.items = type(answer.result) == "table" and (answer.result.items or answer.result) or {}
  end)

  step("ghost_text", function(r)
    -- Type "A" (append at the end of line 1): the plugin asks on its own and shows ghost text.
    api.nvim_win_set_cursor(0, { 1, 0 })
    feed("A")
    wait_for("insert mode", 5000, function()
      return api.nvim_get_mode().mode == "i"
    end)
    local shown = wait_for("ghost text", 90000, function()
      return events_of("PhiSuggestion")[1]
    end)
    r.ghost = shown.data.text
    local marks = api.nvim_buf_get_extmarks(bufnr, require("phi_lsp.suggest").namespace, 0, -1, { details = true })
    r.extmarks = #marks
    r.virt_text = marks[1] and marks[1][4].virt_text
    r.cursor = api.nvim_win_get_cursor(0)
    -- Type its first two characters: the rest stays on show at once, without a new request.
    local requests = completion_requests
    local shown_before = #events_of("PhiSuggestion")
    feed(r.ghost:sub(1, 2))
    local typed = wait_for("the rest of the ghost text after typing through", 10000, function()
      local shown = events_of("PhiSuggestion")
      local last = shown[#shown]
      return #shown > shown_before and last.data.text == r.ghost:sub(3) and last or nil
    end)
    r.typed_through = typed.data.text
    r.requests_while_typing = completion_requests - requests
    -- Accept it with the plugin's key.
    feed(phi.options.keymaps.accept)
    local accepted = wait_for("the suggestion to be inserted", 10000, function()
      return events_of("PhiAccept")[1]
    end)
    r.accepted = accepted.data
    r.line_after = line(1)
    r.cursor_after = api.nvim_win_get_cursor(0)
    r.mode_after = api.nvim_get_mode().mode
    to_normal_mode()
  end)

  step("completion_menu", function(r)
    -- Neovim 0.11's completion menu (vim.lsp.completion) offers the suggestion too.
    api.nvim_buf_set_lines(bufnr, -1, -1, false, { "", "", "def add(a, b):", "    return" })
    api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
    feed("A")
    wait_for("insert mode", 5000, function()
      return api.nvim_get_mode().mode == "i"
    end)
    -- Let the ghost text's own request finish first: the server answers only the newest request
    -- for a document (older ones are superseded).
    local ghost = wait_for("ghost text at the end of `    return`", 90000, function()
      local shown = events_of("PhiSuggestion")
      local last = shown[#shown]
      return last and api.nvim_win_get_cursor(0)[1] == api.nvim_buf_line_count(bufnr)
        and require("phi_lsp.suggest").current(bufnr) and last or nil
    end)
    r.ghost = ghost.data.text
    vim.lsp.completion.get()
    local items = wait_for("completion menu items", 90000, function()
      local info = vim.fn.complete_info({ "items" })
      return #info.items > 0 and info.items or nil
    end)
    r.words = vim.tbl_map(function(item)
      return item.word
    end, items)
    r.menu = vim.tbl_map(function(item)
      return item.menu
    end, items)
    feed("<C-e>")
    to_normal_mode()
    r.line_after = line(api.nvim_buf_line_count(bufnr))
  end)

  step("dismiss", function(r)
    -- Ghost text again at the end of `    return`; the dismiss key hides it and tells the server.
    api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
    local before = #events_of("PhiSuggestion")
    feed("A")
    wait_for("ghost text", 90000, function()
      return #events_of("PhiSuggestion") > before and require("phi_lsp.suggest").current(bufnr)
    end)
    local ns = require("phi_lsp.suggest").namespace
    r.extmarks_before = #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, {})
    feed(phi.options.keymaps.dismiss)
    wait_for("the ghost text to go", 5000, function()
      return #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, {}) == 0
    end)
    r.line_after = line(api.nvim_buf_line_count(bufnr))
    r.mode_after = api.nvim_get_mode().mode
    to_normal_mode()
  end)

  step("cycle_and_partial_accept", function(r)
    -- Several candidates (an invoked request samples more): the ghost text ends in "(i/n)" and
    -- the next key shows the next one. Then the next word and the next line go in one at a time.
    local suggest = require("phi_lsp.suggest")
    local ns = suggest.namespace
    local function hint()
      local marks = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
      local chunks = {}
      for _, mark in ipairs(marks) do
        for _, chunk in ipairs(mark[4].virt_text or {}) do
          table.insert(chunks, chunk)
        end
        for _, vline in ipairs(mark[4].virt_lines or {}) do
          for _, chunk in ipairs(vline) do
            table.insert(chunks, chunk)
          end
        end
      end
      for _, chunk in ipairs(chunks) do
        if chunk[2] == "PhiSuggestionHint" then
          return chunk[1]
        end
      end
      return nil
    end
    api.nvim_buf_set_lines(bufnr, -1, -1, false, { "", "", "def scale(values, factor):", "    return [" })
    local attempts = 0
    repeat
      attempts = attempts + 1
      api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
      local before = #events_of("PhiSuggestion")
      feed("A")
      local shown = wait_for("ghost text after `    return [`", 90000, function()
        local list = events_of("PhiSuggestion")
        return #list > before and suggest.current(bufnr) and list[#list] or nil
      end)
      r.count = shown.data.count
      r.first = { text = shown.data.text, index = shown.data.index, hint = hint() }
      if r.count >= 2 then
        break
      end
      -- One candidate this time: leave, and ask again.
      feed(phi.options.keymaps.dismiss)
      to_normal_mode()
    until attempts >= 4
    r.attempts = attempts
    if r.count >= 2 then
      local before = #events_of("PhiSuggestion")
      feed(phi.options.keymaps.next)
      local second = wait_for("the next candidate", 5000, function()
        local list = events_of("PhiSuggestion")
        return #list > before and list[#list] or nil
      end)
      r.second = { text = second.data.text, index = second.data.index, hint = hint() }
    end
    -- The next word, twice; leaving insert mode then tells the server how much was taken.
    local current = suggest.current(bufnr)
    r.id = current and current.id
    r.line_before = line(api.nvim_buf_line_count(bufnr))
    r.ghost_before = events_of("PhiSuggestion")[#events_of("PhiSuggestion")].data.text
    local function stats()
      return client:request_sync("workspace/executeCommand", { command = "phi.stats" }, 5000).result.completion
    end
    r.stats_before = stats()
    r.words = {}
    for i = 1, 2 do
      local before = #events_of("PhiPartialAccept")
      feed(phi.options.keymaps.accept_word)
      local piece = wait_for("a partial accept (word " .. i .. ")", 5000, function()
        local p = events_of("PhiPartialAccept")
        return #p > before and p[#p].data or nil
      end)
      local shown = events_of("PhiSuggestion")
      table.insert(r.words, { text = piece.text, accepted_chars = piece.accepted_chars, unit = piece.unit,
        line = line(api.nvim_buf_line_count(bufnr)), ghost_after = shown[#shown].data.text })
    end
    to_normal_mode()
    r.stats_after_words = wait_for("the partial accept to reach the server", 5000, function()
      local c = stats()
      return c.partiallyAccepted > r.stats_before.partiallyAccepted and c or nil
    end)
    -- The next line of a new suggestion (all of it when it is one line: then a whole accept).
    api.nvim_buf_set_lines(bufnr, -1, -1, false, { "", "", "class Stack:", "    def __init__(self):" })
    api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
    local before = #events_of("PhiSuggestion")
    feed("A")
    local shown = wait_for("ghost text after `def __init__(self):`", 90000, function()
      local list = events_of("PhiSuggestion")
      return #list > before and suggest.current(bufnr) and list[#list] or nil
    end)
    r.line_ghost = shown.data.text
    local partials, accepts = #events_of("PhiPartialAccept"), #events_of("PhiAccept")
    feed(phi.options.keymaps.accept_line)
    r.line_piece = wait_for("a partial accept (line) or the whole suggestion", 5000, function()
      local p = events_of("PhiPartialAccept")
      if #p > partials then
        return p[#p].data
      end
      local a = events_of("PhiAccept")
      return #a > accepts and { whole = true, text = a[#a].data.text } or nil
    end)
    r.lines_after_line = api.nvim_buf_get_lines(bufnr, 0, -1, false)
    to_normal_mode()
  end)

  step("review_on_save", function(r)
    api.nvim_buf_set_lines(bufnr, -1, -1, false, {
      "",
      "",
      "def mean(values):",
      "    total = 0",
      "    for v in values:",
      "        total += v",
      "    return total / len(values) if values else total / 0",
    })
    local before = #publishes_for(uri)
    vim.cmd.write()
    local published = wait_for("publishDiagnostics for the saved file", 150000, function()
      local list = publishes_for(uri)
      return #list > before and list[#list] or nil
    end)
    r.published = published.diagnostics
    r.published_after_ms = published.at_ms
    r.diagnostics = vim.tbl_map(function(d)
      return {
        source = d.source,
        message = d.message,
        severity = d.severity,
        code = d.code,
        lnum = d.lnum,
        col = d.col,
        end_lnum = d.end_lnum,
        end_col = d.end_col,
      }
    end, vim.diagnostic.get(bufnr))
    r.line_count = api.nvim_buf_line_count(bufnr)
  end)

  step("phi_review_command", function(r)
    if not vim.list_contains(vim.tbl_get(client.server_capabilities, "executeCommandProvider", "commands") or {}, "phi.review") then
      error("the server does not offer the phi.review command", 0)
    end
    local before = #publishes_for(uri)
    local notes = #results.notifications
    vim.cmd("PhiReview")
    wait_for(":PhiReview to finish", 150000, function()
      for i = notes + 1, #results.notifications do
        local msg = results.notifications[i].message
        if msg:match("review of .* done") or msg:match("review failed") then
          r.message = msg
          return true
        end
      end
      return false
    end)
    r.publishes = #publishes_for(uri) - before
  end)

  step("phi_review_workspace_command", function(r)
    local notes = #results.notifications
    vim.cmd("PhiReviewWorkspace")
    wait_for(":PhiReviewWorkspace to finish", 150000, function()
      for i = notes + 1, #results.notifications do
        local msg = results.notifications[i].message
        if msg:match("workspace review done") or msg:match("workspace review failed") then
          r.message = msg
          return true
        end
      end
      return false
    end)
  end)

  -- The server is "busy" while any model request is in flight (a speculative next-line
  -- prefetch, an abandoned completion waiting out its grace): wait until it is idle again.
  local function until_ready()
    wait_for("the server to be ready (nothing in flight)", 60000, function()
      local s = phi.status(bufnr)
      return s and s.state == "ready"
    end)
  end

  step("phi_status_command", function(r)
    until_ready()
    r.output = vim.fn.execute("PhiStatus")
    r.statusline = phi.statusline()
  end)

  step("set_command", function(r)
    -- A settings change travels as workspace/didChangeConfiguration; the server stays up.
    vim.cmd("PhiSet completion.maxTokens 48")
    r.settings = client.settings
    local answer = client:request_sync("workspace/executeCommand", { command = "phi.status" }, 5000)
    r.status_after = answer and answer.result
  end)

  step("feedback", function(r)
    -- The accept and dismiss keys reached the server (phi.acceptCompletion / phi.rejectCompletion).
    local answer = client:request_sync("workspace/executeCommand", { command = "phi.stats" }, 5000)
    r.completion = answer and answer.result and answer.result.completion
  end)

  step("health", function(r)
    until_ready()
    vim.cmd("checkhealth phi_lsp")
    r.lines = api.nvim_buf_get_lines(0, 0, -1, false)
  end)
end

vim.defer_fn(function()
  if not finished then
    results.fatal = ("the whole run took longer than %d ms"):format(deadline_ms)
    finish()
  end
end, deadline_ms)

co = coroutine.create(function()
  if scenario == "inline" then
    main_inline()
  else
    main()
  end
  finish()
end)
vim.schedule(resume)
