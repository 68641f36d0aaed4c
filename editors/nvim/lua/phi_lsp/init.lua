--- phi-lsp for Neovim: registers the phi-lsp language server with the built-in client
--- (vim.lsp.config / vim.lsp.enable, Neovim 0.11+), shows its suggestions as inline completion
--- (vim.lsp.inline_completion on Neovim 0.12+, ghost text fed by textDocument/completion
--- before that) and its review findings through vim.diagnostic.
---
---   require("phi_lsp").setup({
---     cmd = { "phi-lsp" },
---     settings = { backend = { url = "http://localhost:8000/v1" }, completion = {...}, review = {...} },
---   })
---
--- `settings` is the server's settings tree (docs/CONTRACT.md). It is sent as
--- initializationOptions, as workspace/didChangeConfiguration (wrapped as { phiLsp = ... }),
--- and again whenever it changes (`update_settings`, `:PhiSet`).

local M = {}

local api = vim.api

--- The vim.lsp.config name, which is also the client's name.
M.name = "phi_lsp"

local STATUS_METHOD = "phi/status"

--- @class phi_lsp.Options
local defaults = {
  --- How to start the server.
  cmd = { "phi-lsp" },
  --- Languages the server has tree-sitter grammars for (phi_lsp/syntax.py).
  filetypes = {
    "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust",
    "java", "c", "cpp", "ruby", "kotlin", "lua", "php", "sh", "bash", "scala", "swift",
  },
  --- A file or folder that marks a project root (the workspace folder sent to the server).
  root_markers = { "pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod", "Cargo.toml", ".git" },
  --- The server's settings, nested: backend = { url = ... }, completion = {...}, review = {...}.
  settings = {},
  suggestion = {
    --- Show the model's suggestions while typing.
    enabled = true,
    --- Ask automatically as you type (otherwise only on keymaps.trigger).
    auto_trigger = true,
    --- Neovim 0.11 ghost text: wait this long after the last keystroke before asking.
    debounce_ms = 75,
    --- Neovim 0.11: also offer the suggestion in the completion menu (omnifunc, <C-x><C-o>,
    --- vim.lsp.completion.get()).
    popup = true,
  },
  --- Insert-mode keys (false turns one off). When no suggestion is shown a key keeps its own
  --- meaning (so accept = "<Tab>" works), except Alt keys, which then do nothing.
  keymaps = {
    accept = "<M-l>",
    --- Accept the next word / the next line of the suggestion (as copilot.vim's keys).
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    dismiss = "<C-]>",
    trigger = "<M-\\>",
    next = "<M-]>",
    prev = "<M-[>",
  },
  --- vim.diagnostic.config() for the phi-review diagnostics only; false leaves them as your
  --- global vim.diagnostic settings have it.
  diagnostics = { virtual_text = true, severity_sort = true },
  --- Define :PhiStatus, :PhiReview, :PhiReviewWorkspace, :PhiStats, :PhiSet.
  commands = true,
  --- Called after phi_lsp's own attach work: function(client, bufnr).
  on_attach = nil,
  --- Anything else for vim.lsp.config (root_dir, cmd_env, capabilities, ...).
  lsp = {},
}

M.options = nil --- @type phi_lsp.Options?

local statuses = {} --- client id -> last phi/status { state, message, model, url }
local progress = {} --- client id -> { token -> { title, message, percentage } }
local modes = {} --- bufnr -> "inline" (native) | "completion" (ghost text fallback) | nil

-- -- helpers -------------------------------------------------------------------------------

--- A non-empty list (an empty table counts as a map: it merges, never replaces).
local function is_list(t)
  return type(t) == "table" and next(t) ~= nil and vim.islist(t)
end

--- Deep merge where lists (cmd, filetypes, ...) are replaced, never merged item by item.
local function merge(base, override)
  if override == nil then
    return base
  end
  if type(base) ~= "table" or type(override) ~= "table" or is_list(base) or is_list(override) then
    return override
  end
  local out = {}
  for k, v in pairs(base) do
    out[k] = v
  end
  for k, v in pairs(override) do
    out[k] = merge(base[k], v)
  end
  return out
end

--- { ["completion.enabled"] = false } -> { completion = { enabled = false } }
local function nest(tbl)
  if type(tbl) ~= "table" or is_list(tbl) then
    return tbl
  end
  local out = {}
  for key, value in pairs(tbl) do
    local parts = vim.split(tostring(key), ".", { plain = true })
    local target = out
    for i = 1, #parts - 1 do
      target[parts[i]] = type(target[parts[i]]) == "table" and target[parts[i]] or {}
      target = target[parts[i]]
    end
    target[parts[#parts]] = merge(target[parts[#parts]], nest(value))
  end
  return out
end

--- Drop empty sections (`completion = {}` would travel as a JSON array and be rejected); an
--- empty table as a value stays a list (`privacy = { exclude = {} }`), and an empty tree becomes
--- a JSON object.
local function prune(tree)
  local out = {}
  for section, entries in pairs(tree) do
    if type(entries) ~= "table" or next(entries) ~= nil then
      out[section] = entries
    end
  end
  return out
end

M.nest = nest

local function wire_settings()
  local settings = prune(nest(M.options and M.options.settings or {}))
  if next(settings) == nil then
    return vim.empty_dict(), { phiLsp = vim.empty_dict() }
  end
  return settings, { phiLsp = settings }
end

local function native_inline()
  local ok, inline = pcall(function()
    return vim.lsp.inline_completion
  end)
  return ok and type(inline) == "table" and type(inline.enable) == "function" and type(inline.get) == "function"
end

--- The phi-lsp clients: all, or the one attached to `bufnr`.
function M.clients(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
end

local function client_for(bufnr)
  return M.clients(bufnr)[1] or M.clients()[1]
end

local function notify(msg, level)
  vim.notify("phi-lsp: " .. msg, level or vim.log.levels.INFO)
end

-- -- status --------------------------------------------------------------------------------

local function redraw_status()
  pcall(vim.cmd, "redrawstatus!")
end

local function on_status(_, result, ctx)
  if type(result) ~= "table" then
    return
  end
  statuses[ctx.client_id] = result
  api.nvim_exec_autocmds("User", {
    pattern = "PhiStatus",
    modeline = false,
    data = { client_id = ctx.client_id, status = result },
  })
  redraw_status()
end

--- The last phi/status the server sent ({ state, message, model, url }), for the client
--- attached to `bufnr` (default: current buffer, else any phi-lsp client); nil if none.
function M.status(bufnr)
  local client = client_for(bufnr or api.nvim_get_current_buf())
  if not client then
    return nil
  end
  local status = statuses[client.id]
  return status and vim.tbl_extend("force", { client_id = client.id }, status) or nil
end

--- The server's current status, asked with workspace/executeCommand phi.status (falls back to
--- the last notification when the server does not answer within `timeout_ms`).
function M.fetch_status(client, timeout_ms)
  local answer = client:request_sync(
    "workspace/executeCommand",
    { command = "phi.status", arguments = {} },
    timeout_ms or 2000
  )
  if answer and not answer.err and type(answer.result) == "table" then
    statuses[client.id] = answer.result
    return answer.result, nil
  end
  local why = answer and answer.err and answer.err.message or "no answer"
  return statuses[client.id], why
end

--- A statusline component: "phi: ready", "phi: busy", "phi: <progress message>" while the
--- server reports $/progress (model start-up, workspace review), or "" when no phi-lsp client
--- is attached to the current buffer. The text never contains "%".
function M.statusline()
  local client = M.clients(api.nvim_get_current_buf())[1]
  if not client then
    return ""
  end
  for _, work in pairs(progress[client.id] or {}) do
    local text = work.message or work.title or "working"
    return "phi: " .. text:gsub("%%", "")
  end
  local status = statuses[client.id]
  return "phi: " .. (status and status.state or "starting")
end

local function on_progress(ev)
  local data = ev.data or {}
  local client = data.client_id and vim.lsp.get_client_by_id(data.client_id)
  if not client or client.name ~= M.name then
    return
  end
  local params = data.params or {}
  local value = params.value or {}
  local works = progress[client.id] or {}
  progress[client.id] = works
  local token = tostring(params.token)
  if value.kind == "end" then
    works[token] = nil
  else
    local work = works[token] or {}
    work.title = value.title or work.title
    work.message = value.message or work.message
    work.percentage = value.percentage or work.percentage
    works[token] = work
  end
  redraw_status()
end

-- -- suggestions ---------------------------------------------------------------------------

--- How suggestions reach this buffer: "inline" (Neovim's inline completion), "completion"
--- (ghost text and the completion menu, from textDocument/completion) or nil.
function M.suggestion_mode(bufnr)
  return modes[bufnr or api.nvim_get_current_buf()]
end

--- Accept the suggestion shown in `bufnr`. Returns false when there is none (so a mapping can
--- fall back to the key's own meaning). The text goes in on the next tick, so this may be called
--- from an <expr> mapping.
function M.accept(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if modes[bufnr] == "inline" then
    return vim.lsp.inline_completion.get({ bufnr = bufnr }) and true or false
  elseif modes[bufnr] == "completion" then
    return require("phi_lsp.suggest").accept(bufnr)
  end
  return false
end

--- Accept the next "word" or "line" of the suggestion shown in `bufnr` (Neovim 0.11 ghost text;
--- with Neovim's own inline completion the whole suggestion). False when none is shown.
function M.accept_partial(unit, bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if modes[bufnr] == "inline" then
    return M.accept(bufnr)
  elseif modes[bufnr] == "completion" then
    return require("phi_lsp.suggest").accept_partial(bufnr, unit)
  end
  return false
end

--- Hide the shown suggestion (and tell the server it was rejected). False when none was shown.
function M.dismiss(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if modes[bufnr] == "completion" then
    return require("phi_lsp.suggest").dismiss(bufnr, true)
  end
  return false
end

--- Ask for a suggestion now.
function M.trigger(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if modes[bufnr] == "completion" then
    return require("phi_lsp.suggest").request(bufnr, true)
  end
  return false
end

--- Show the next (count > 0) or previous suggestion.
function M.cycle(count, bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if modes[bufnr] == "inline" and vim.lsp.inline_completion.select then
    vim.lsp.inline_completion.select({ bufnr = bufnr, count = count })
    return true
  elseif modes[bufnr] == "completion" then
    return require("phi_lsp.suggest").cycle(bufnr, count)
  end
  return false
end

local function map_keys(bufnr)
  local keys = M.options.keymaps or {}
  local function imap(lhs, fn, desc)
    if not lhs or lhs == "" then
      return
    end
    -- Unused, Tab or <C-]> keep their meaning; an Alt key would leave insert mode, so it does nothing.
    local fallback = lhs:match("^<[MmAa]%-") and "" or lhs
    vim.keymap.set("i", lhs, function()
      if fn(bufnr) then
        return ""
      end
      return fallback
    end, { buffer = bufnr, expr = true, silent = true, desc = "phi-lsp: " .. desc })
  end
  imap(keys.accept, M.accept, "accept the suggestion")
  imap(keys.accept_word, function(b)
    return M.accept_partial("word", b)
  end, "accept the next word of the suggestion")
  imap(keys.accept_line, function(b)
    return M.accept_partial("line", b)
  end, "accept the next line of the suggestion")
  imap(keys.dismiss, M.dismiss, "dismiss the suggestion")
  imap(keys.trigger, M.trigger, "ask for a suggestion now")
  imap(keys.next, function(b)
    return M.cycle(1, b)
  end, "next suggestion")
  imap(keys.prev, function(b)
    return M.cycle(-1, b)
  end, "previous suggestion")
end

local function on_attach(client, bufnr)
  local opts = M.options
  if opts.diagnostics then
    vim.diagnostic.config(opts.diagnostics, vim.lsp.diagnostic.get_namespace(client.id))
  end
  local suggestion = opts.suggestion or {}
  if suggestion.enabled ~= false then
    if native_inline() and client:supports_method("textDocument/inlineCompletion", bufnr) then
      modes[bufnr] = "inline"
      vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    elseif client:supports_method("textDocument/completion", bufnr) then
      modes[bufnr] = "completion"
      require("phi_lsp.suggest").attach(client, bufnr, suggestion)
    end
  end
  map_keys(bufnr)
  if opts.on_attach then
    opts.on_attach(client, bufnr)
  end
end

-- -- settings ------------------------------------------------------------------------------

--- Send the current settings to running servers (didChangeConfiguration) and keep them for
--- servers started later.
local function push_settings()
  local init_options, settings = wire_settings()
  vim.lsp.config(M.name, { init_options = init_options, settings = settings })
  for _, client in ipairs(M.clients()) do
    client.settings = settings -- answers workspace/configuration pulls
    client:notify("workspace/didChangeConfiguration", { settings = settings })
  end
end

--- Change server settings: `update_settings({ completion = { enabled = false } })` or with dotted
--- keys `update_settings({ ["review.onSave"] = false })`. Sent to running servers at once.
function M.update_settings(changes)
  assert(M.options, "call require('phi_lsp').setup() first")
  M.options.settings = merge(nest(M.options.settings or {}), nest(changes or {}))
  push_settings()
end

-- -- commands ------------------------------------------------------------------------------

local STATE_HL = {
  ready = "DiagnosticOk",
  busy = "DiagnosticInfo",
  starting = "DiagnosticWarn",
  disabled = "DiagnosticWarn",
  unreachable = "DiagnosticError",
  error = "DiagnosticError",
}

local function describe_mode(bufnr)
  local mode = modes[bufnr]
  if mode == "inline" then
    return "inline completion (vim.lsp.inline_completion)"
  elseif mode == "completion" then
    return "ghost text and completion menu (textDocument/completion)"
  end
  return "off"
end

--- :PhiStatus — the server's status, model and backend, for every phi-lsp client.
function M.show_status()
  local clients = M.clients()
  if #clients == 0 then
    api.nvim_echo({
      { "phi-lsp is not running. ", "WarningMsg" },
      { "Open a file of a configured filetype (" .. table.concat(M.options.filetypes, ", ")
        .. "); :checkhealth phi_lsp says what is missing." },
    }, true, {})
    return
  end
  local chunks = {}
  for i, client in ipairs(clients) do
    local status, why = M.fetch_status(client)
    status = status or {}
    local state = status.state or "unknown"
    if i > 1 then
      table.insert(chunks, { "\n" })
    end
    table.insert(chunks, { "phi-lsp: " })
    table.insert(chunks, { state, STATE_HL[state] or "Normal" })
    if status.model and status.model ~= "" then
      table.insert(chunks, { "  model " .. status.model })
    end
    if status.url and status.url ~= "" then
      table.insert(chunks, { "  at " .. status.url })
    end
    if status.message and status.message ~= "" then
      table.insert(chunks, { "\n  " .. status.message })
    end
    if why then
      table.insert(chunks, { "\n  (phi.status did not answer: " .. why .. "; showing the last notification)", "Comment" })
    end
    local buffers = vim.tbl_keys(client.attached_buffers or {})
    table.insert(chunks, {
      ("\n  client %d, root %s, %d buffer(s); suggestions here: %s"):format(
        client.id,
        client.root_dir or "(none)",
        #buffers,
        describe_mode(api.nvim_get_current_buf())
      ),
    })
  end
  api.nvim_echo(chunks, true, {})
end

local function review_count(bufnr)
  local n = 0
  for _, d in ipairs(vim.diagnostic.get(bufnr)) do
    if d.source == "phi-review" then
      n = n + 1
    end
  end
  return n
end

--- :PhiReview — review the current buffer now (phi.review).
function M.review(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = M.clients(bufnr)[1]
  if not client then
    notify("no phi-lsp client is attached to this buffer", vim.log.levels.WARN)
    return
  end
  local name = vim.fn.fnamemodify(api.nvim_buf_get_name(bufnr), ":~:.")
  notify("reviewing " .. name .. " ...")
  client:exec_cmd({ title = "Review", command = "phi.review", arguments = { vim.uri_from_bufnr(bufnr) } },
    { bufnr = bufnr }, function(err)
      if err then
        notify("review failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      else
        notify(("review of %s done: %d finding(s)"):format(name, review_count(bufnr)))
      end
    end)
end

--- :PhiReviewWorkspace — review every file of the workspace (phi.reviewWorkspace); progress
--- shows in the statusline component and findings in the quickfix-able diagnostics.
function M.review_workspace()
  local client = client_for(api.nvim_get_current_buf())
  if not client then
    notify("phi-lsp is not running", vim.log.levels.WARN)
    return
  end
  notify("reviewing the workspace " .. (client.root_dir or "") .. " ...")
  client:exec_cmd({ title = "Review workspace", command = "phi.reviewWorkspace", arguments = {} },
    { bufnr = api.nvim_get_current_buf() }, function(err)
      if err then
        notify("workspace review failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      else
        notify("workspace review done; :lua vim.diagnostic.setqflist() lists the findings")
      end
    end)
end

--- :PhiStats — the server's counters (phi.stats).
function M.show_stats()
  local client = client_for(api.nvim_get_current_buf())
  if not client then
    notify("phi-lsp is not running", vim.log.levels.WARN)
    return
  end
  client:exec_cmd({ title = "Stats", command = "phi.stats", arguments = {} }, {}, function(err, result)
    if err then
      notify("phi.stats failed: " .. (err.message or ""), vim.log.levels.ERROR)
    else
      api.nvim_echo({ { vim.inspect(result) } }, true, {})
    end
  end)
end

local function parse_value(text)
  local ok, value = pcall(vim.json.decode, text)
  if ok and value ~= vim.NIL then
    return value
  end
  return text
end

local function define_commands()
  api.nvim_create_user_command("PhiStatus", M.show_status, { desc = "phi-lsp: server and model status" })
  api.nvim_create_user_command("PhiReview", function()
    M.review()
  end, { desc = "phi-lsp: review the current buffer" })
  api.nvim_create_user_command("PhiReviewWorkspace", M.review_workspace, { desc = "phi-lsp: review the workspace" })
  api.nvim_create_user_command("PhiStats", M.show_stats, { desc = "phi-lsp: server counters" })
  api.nvim_create_user_command("PhiSet", function(cmd)
    local key, value = cmd.args:match("^%s*(%S+)%s+(.-)%s*$")
    if not key then
      notify("usage: :PhiSet completion.enabled false", vim.log.levels.WARN)
      return
    end
    M.update_settings({ [key] = parse_value(value) })
    notify(("%s = %s sent to the server"):format(key, value))
  end, { nargs = "+", desc = "phi-lsp: change a server setting (:PhiSet review.onSave false)" })
end

-- -- setup ---------------------------------------------------------------------------------

--- Register phi-lsp with Neovim's LSP client and enable it for the configured filetypes.
--- @param opts? phi_lsp.Options
function M.setup(opts)
  if type(vim.lsp.enable) ~= "function" or vim.lsp.config == nil then
    notify("needs Neovim 0.11 or newer (vim.lsp.config / vim.lsp.enable)", vim.log.levels.ERROR)
    return
  end
  local again = M.options ~= nil
  M.options = merge(defaults, opts or {})
  M.options.settings = nest(M.options.settings or {})

  api.nvim_set_hl(0, "PhiSuggestion", { link = "Comment", default = true })
  api.nvim_set_hl(0, "PhiSuggestionHint", { link = "NonText", default = true })

  local init_options, settings = wire_settings()
  local config = merge(M.options.lsp or {}, {
    cmd = M.options.cmd,
    filetypes = M.options.filetypes,
    root_markers = M.options.root_markers,
    init_options = init_options,
    settings = settings,
    handlers = merge((M.options.lsp or {}).handlers or {}, { [STATUS_METHOD] = on_status }),
    on_attach = on_attach,
    on_exit = function(_, _, client_id)
      statuses[client_id] = nil
      progress[client_id] = nil
      vim.schedule(redraw_status)
    end,
  })
  vim.lsp.config[M.name] = config -- replaces what an earlier setup() said
  vim.lsp.enable(M.name)

  local group = api.nvim_create_augroup("phi_lsp", { clear = true })
  api.nvim_create_autocmd("LspProgress", { group = group, callback = on_progress })
  api.nvim_create_autocmd("LspDetach", {
    group = group,
    callback = function(ev)
      local client = vim.lsp.get_client_by_id(ev.data.client_id)
      if client and client.name == M.name then
        modes[ev.buf] = nil
        require("phi_lsp.suggest").detach(ev.buf)
      end
    end,
  })
  if M.options.commands then
    define_commands()
  end
  if again then
    push_settings()
  end
end

return M
