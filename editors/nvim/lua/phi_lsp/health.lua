--- :checkhealth phi_lsp

local M = {}

local health = vim.health

local DOCTOR_TIMEOUT_MS = 30000

local function setup_options()
  local ok, phi = pcall(require, "phi_lsp")
  return ok and phi or nil, ok and phi.options or nil
end

local function check_neovim()
  health.start("Neovim")
  local v = vim.version()
  local version = ("%d.%d.%d"):format(v.major, v.minor, v.patch)
  if type(vim.lsp.enable) == "function" and vim.lsp.config ~= nil then
    health.ok("Neovim " .. version .. " has vim.lsp.config and vim.lsp.enable")
  else
    health.error("Neovim " .. version .. " is too old", { "phi_lsp needs Neovim 0.11 or newer" })
    return false
  end
  local ok, inline = pcall(function()
    return vim.lsp.inline_completion
  end)
  if ok and type(inline) == "table" and type(inline.enable) == "function" then
    health.ok("native inline completion (vim.lsp.inline_completion): suggestions show as ghost text")
  else
    health.info(
      "no vim.lsp.inline_completion (Neovim 0.12+): suggestions come from textDocument/completion, "
        .. "shown as phi_lsp's own ghost text and in the completion menu"
    )
  end
  return true
end

local function check_setup(options)
  health.start("Setup")
  if not options then
    health.warn("require('phi_lsp').setup() has not been called", {
      "Call it from your config, e.g. require('phi_lsp').setup({ settings = { backend = { url = 'http://localhost:8000/v1' } } })",
    })
    return false
  end
  health.ok("setup() called; filetypes: " .. table.concat(options.filetypes or {}, ", "))
  local settings = options.settings or {}
  local url = vim.tbl_get(settings, "backend", "url")
  if url then
    health.ok("settings.backend.url = " .. url)
  else
    health.info(
      "settings.backend.url is not set: the server starts a managed local vLLM (phi-lsp serve-model); "
        .. "set it to use an existing vLLM server"
    )
  end
  for _, task in ipairs({ "completion", "review" }) do
    local model = vim.tbl_get(settings, task, "model")
    health.info(("settings.%s.model = %s"):format(task, model or "(server default)"))
  end
  return true
end

local function check_command(options)
  health.start("Server command")
  local cmd = options.cmd
  if type(cmd) == "function" then
    health.info("cmd is a function (an in-process transport); cannot check an executable")
    return true
  end
  if type(cmd) ~= "table" or not cmd[1] then
    health.error("cmd is not set", { "setup({ cmd = { 'phi-lsp' } })" })
    return false
  end
  local path = vim.fn.exepath(cmd[1])
  if path == "" then
    health.error(("`%s` is not executable or not on PATH"):format(cmd[1]), {
      "Install the server: pip install phi-lsp (or pip install 'phi-lsp[cpu]' to run the demo model on a CPU)",
      "or point setup({ cmd = { '/path/to/venv/bin/phi-lsp' } }) at it",
    })
    return false
  end
  health.ok(("`%s` found: %s"):format(table.concat(cmd, " "), path))
  return true
end

local STATE_ADVICE = {
  unreachable = {
    "Start the backend, e.g. `vllm serve microsoft/Phi-4-mini-instruct`, or fix settings.backend.url",
    "`phi-lsp doctor --backend-url URL` checks it from a shell",
  },
  error = { "Run `phi-lsp doctor` in a shell for details" },
  disabled = { "No backend yet: set settings.backend.url, or let phi-lsp start its managed vLLM" },
  starting = { "The managed vLLM is starting; the first start can take minutes. :PhiStatus shows its progress" },
}

local function report_state(status, source)
  local state = status.state or "unknown"
  local where = ""
  if status.model and status.model ~= "" then
    where = " (model " .. status.model .. (status.url ~= "" and status.url and (" at " .. status.url) or "") .. ")"
  end
  local text = ("server status %s%s [%s]%s"):format(
    state,
    where,
    source,
    status.message and status.message ~= "" and (": " .. status.message) or ""
  )
  if state == "ready" or state == "busy" then
    health.ok(text)
  elseif state == "starting" or state == "disabled" then
    health.warn(text, STATE_ADVICE[state])
  else
    health.error(text, STATE_ADVICE[state] or STATE_ADVICE.error)
  end
end

local function toml_key(key)
  key = tostring(key)
  if key:match("^[%w_-]+$") then
    return key
  end
  return '"' .. key:gsub('[\\"]', "\\%0") .. '"'
end

local function toml_value(value)
  local kind = type(value)
  if kind == "string" then
    return '"' .. value:gsub('[\\"]', "\\%0"):gsub("\n", "\\n"):gsub("\t", "\\t") .. '"'
  elseif kind == "number" then
    return value == math.floor(value) and ("%d"):format(value) or tostring(value)
  elseif kind == "boolean" then
    return tostring(value)
  elseif kind == "table" and (next(value) == nil or vim.islist(value)) then
    return "[" .. table.concat(vim.tbl_map(toml_value, value), ", ") .. "]"
  elseif kind == "table" then
    local parts = {}
    for k, v in pairs(value) do
      table.insert(parts, toml_key(k) .. " = " .. toml_value(v))
    end
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  return '""'
end

--- setup()'s settings as a phi-lsp config file (TOML), the API key left out (it goes to the
--- doctor through PHI_LSP_API_KEY instead of a file).
local function settings_file(settings)
  local lines, api_key = {}, nil
  for section, entries in pairs(settings) do
    if type(entries) == "table" and next(entries) ~= nil then
      table.insert(lines, "[" .. toml_key(section) .. "]")
      for key, value in pairs(entries) do
        if section == "backend" and key == "apiKey" then
          api_key = value
        else
          table.insert(lines, toml_key(key) .. " = " .. toml_value(value))
        end
      end
    end
  end
  local path = vim.fn.tempname() .. ".toml"
  vim.fn.writefile(lines, path)
  return path, api_key
end

--- `phi-lsp doctor` with the settings from setup(): does the backend answer, does it serve the
--- configured models (the server itself only finds out at the first request).
local function run_doctor(options, cwd)
  health.start("Backend (phi-lsp doctor)")
  if type(options.cmd) ~= "table" then
    health.info("cmd is not a command line; skipped")
    return
  end
  local settings = require("phi_lsp").nest(options.settings or {})
  local config, api_key = settings_file(settings)
  local cmd = vim.list_extend(vim.deepcopy(options.cmd), { "doctor", "--config", config })
  local shown = table.concat(options.cmd, " ") .. " doctor"
  local env = api_key and { PHI_LSP_API_KEY = tostring(api_key) } or nil
  local ok, proc = pcall(vim.system, cmd, { text = true, cwd = cwd, env = env })
  if not ok then
    os.remove(config)
    health.error("could not run `" .. shown .. "`: " .. tostring(proc))
    return
  end
  local result = proc:wait(DOCTOR_TIMEOUT_MS)
  os.remove(config)
  local output = vim.trim((result.stdout or "") .. "\n" .. (result.stderr or ""))
  local fixes, facts, in_fixes = {}, {}, false
  for _, line in ipairs(vim.split(output, "\n", { plain = true })) do
    if line:match("^What to fix") then
      in_fixes = true
    elseif in_fixes and line:match("^%s+%- ") then
      table.insert(fixes, (line:gsub("^%s+%- ", "")))
    elseif line:match("^Backend:") or line:match("^  reachable") or line:match("^  %a+%.model .*served") then
      table.insert(facts, vim.trim(line))
    end
  end
  for _, fact in ipairs(facts) do
    health.info(fact)
  end
  if result.code == 0 then
    health.ok("`" .. shown .. "`: everything looks right")
  elseif result.code == 124 or (result.signal or 0) ~= 0 then
    health.warn(("`%s` did not finish within %d s"):format(shown, DOCTOR_TIMEOUT_MS / 1000))
  else
    health.error("`" .. shown .. "` found problems", #fixes > 0 and fixes or { output })
  end
end

local function check_server(phi, options)
  health.start("Server")
  local clients = phi.clients()
  if #clients == 0 then
    health.warn("phi-lsp is not running", {
      "It starts when you open a file of a configured filetype (" .. table.concat(options.filetypes or {}, ", ") .. ")",
      ":LspLog shows why it stopped, if it did",
    })
    run_doctor(options, vim.fn.getcwd())
    return
  end
  for _, client in ipairs(clients) do
    local buffers = vim.tbl_keys(client.attached_buffers or {})
    local info = client.server_info or {}
    health.ok(("client %d running (%s %s), root %s, attached to %d buffer(s)"):format(
      client.id,
      info.name or "phi-lsp",
      info.version or "",
      client.root_dir or "(none)",
      #buffers
    ))
    local caps = client.server_capabilities or {}
    local features = {}
    for _, f in ipairs({
      { "inlineCompletionProvider", "inline completion" },
      { "completionProvider", "completion" },
      { "codeActionProvider", "code actions" },
      { "executeCommandProvider", "commands" },
    }) do
      if caps[f[1]] then
        table.insert(features, f[2])
      end
    end
    health.info("server offers: " .. (#features > 0 and table.concat(features, ", ") or "(nothing yet)"))
    if not caps.inlineCompletionProvider and not caps.completionProvider then
      health.warn("the server offers no completion, so no suggestions will show", {
        "Check settings.completion.enabled and the server's log (:LspLog)",
      })
    end
    local status, why = phi.fetch_status(client, 3000)
    if status then
      report_state(status, why and "last phi/status notification" or "phi.status")
    else
      health.warn("the server did not report its status: " .. (why or "no answer"), {
        "See the server's log with :LspLog",
      })
    end
  end
  run_doctor(options, clients[1].root_dir or vim.fn.getcwd())
end

function M.check()
  if not check_neovim() then
    return
  end
  local phi, options = setup_options()
  if not check_setup(options) then
    return
  end
  if check_command(options) then
    check_server(phi, options)
  end
end

return M
