--- Suggestions for Neovim without inline completion (0.11): the server answers
--- textDocument/completion with the whole suggestion as one item's textEdit (docs/CONTRACT.md).
--- This module asks for it as you type (debounced), shows it as ghost text (extmarks: the first
--- line inline at the cursor, further lines as virtual lines), and inserts it on accept, then runs
--- the item's command (phi.acceptCompletion). With `popup`, the same items are also offered in the
--- completion menu (vim.lsp.completion), multi-line suggestions included.
---
--- A suggestion is shown only while the buffer and cursor are exactly where they were when it was
--- asked for; any edit or cursor move hides it and (with auto_trigger) asks again.

local M = {}

local api = vim.api
local ns = api.nvim_create_namespace("phi_lsp.suggestion")

M.namespace = ns

local INVOKED = 1 -- lsp.CompletionTriggerKind.Invoked

--- @class phi_lsp.SuggestState
--- @field client_id integer
--- @field opts table
--- @field seq integer        request counter; an answer to an older request is dropped
--- @field cancel? fun()      cancels the request in flight
--- @field timer? uv.uv_timer_t
--- @field items? table[]     normalised suggestions of the last answer
--- @field index integer      which one is shown
--- @field anchor? table      { tick, row, col } where they were asked for
--- @field shown boolean
--- @field partial? table    { id, chars } of a suggestion partly accepted, told to the server when it is left

local states = {} --- @type table<integer, phi_lsp.SuggestState>
local typed_through -- defined below

local function stop_timer(st)
  if st.timer then
    st.timer:stop()
    if not st.timer:is_closing() then
      st.timer:close()
    end
    st.timer = nil
  end
end

--- A suggestion partly accepted (next word, next line) and then left is reported once, as
--- phi.acceptCompletion with acceptedChars: the server records it as "partiallyAccepted".
local function report_partial(st, bufnr)
  local partial = st.partial
  st.partial = nil
  local client = partial and vim.lsp.get_client_by_id(st.client_id)
  if client and partial.command then
    local command = vim.deepcopy(partial.command)
    command.arguments = { { id = partial.id, acceptedChars = partial.chars } }
    client:exec_cmd(command, { bufnr = bufnr })
  end
end

local function hide(st, bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
  st.shown = false
  if st.partial then -- hidden means left: the rest of a partly accepted suggestion is not taken
    report_partial(st, bufnr)
  end
end

local function cancel(st)
  stop_timer(st)
  st.seq = st.seq + 1
  if st.cancel then
    pcall(st.cancel)
    st.cancel = nil
  end
end

--- Where the cursor of the window showing `bufnr` is: row (1-based), col (0-based bytes).
local function cursor_of(bufnr)
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    return nil
  end
  local pos = api.nvim_win_get_cursor(win)
  return pos[1], pos[2], win
end

local function in_insert_mode()
  return api.nvim_get_mode().mode:sub(1, 1) == "i"
end

local function still_at(st, bufnr)
  local anchor = st.anchor
  if not anchor or api.nvim_buf_get_changedtick(bufnr) ~= anchor.tick then
    return false
  end
  local row, col = cursor_of(bufnr)
  return row == anchor.row and col == anchor.col
end

--- Turn a CompletionList into suggestions with byte ranges on the buffer.
--- Each: { text, srow, scol, erow, ecol (0-based, bytes), command, id, label }
local function normalise(result, client, bufnr, row, col)
  local items = result and (result.items or result) or {}
  if type(items) ~= "table" then
    return {}
  end
  items = vim.deepcopy(items)
  table.sort(items, function(a, b)
    return (a.sortText or a.label or "") < (b.sortText or b.label or "")
  end)
  local encoding = client.offset_encoding or "utf-16"
  local out = {}
  for _, item in ipairs(items) do
    local edit = item.textEdit
    local text = edit and edit.newText or item.insertText or item.label
    local range = edit and (edit.range or edit.insert)
    local s = { text = text, command = item.command, label = item.label }
    if range then
      local function byte(pos)
        local line = api.nvim_buf_get_lines(bufnr, pos.line, pos.line + 1, false)[1] or ""
        local ok, b = pcall(vim.str_byteindex, line, encoding, pos.character, false)
        return ok and b or #line
      end
      s.srow, s.scol = range.start.line, byte(range.start)
      s.erow, s.ecol = range["end"].line, byte(range["end"])
    else
      s.srow, s.scol, s.erow, s.ecol = row - 1, col, row - 1, col
    end
    local args = item.command and item.command.arguments
    s.id = type(args) == "table" and type(args[1]) == "table" and args[1].id or nil
    if type(text) == "string" and text ~= "" then
      table.insert(out, s)
    end
  end
  return out
end

--- The part of a suggestion not typed yet, if it can be shown at the cursor: the edit must start
--- on the cursor's line at or before the cursor, and its text must begin with what is typed
--- between its start and the cursor.
local function ghost_text(s, bufnr, row, col)
  if s.srow ~= row - 1 or s.erow ~= row - 1 or s.scol > col then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row - 1, row, false)[1] or ""
  local typed = line:sub(s.scol + 1, col)
  if s.text:sub(1, #typed) ~= typed then
    return nil
  end
  local rest = s.text:sub(#typed + 1)
  return rest ~= "" and rest or nil
end

local function show(st, bufnr)
  api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  st.shown = false
  local s = st.items and st.items[st.index]
  local row, col = cursor_of(bufnr)
  if not s or not row then
    return false
  end
  local rest = ghost_text(s, bufnr, row, col)
  if not rest then
    return false
  end
  local lines = vim.split(rest, "\n", { plain = true })
  -- Several candidates: "(i/n)" after the suggestion says which one this is.
  local hint = #st.items > 1 and (" (%d/%d)"):format(st.index, #st.items) or nil
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "PhiSuggestion" } }
  end
  local first = { { lines[1], "PhiSuggestion" } }
  if hint then
    local target = #virt_lines > 0 and virt_lines[#virt_lines] or first
    table.insert(target, { hint, "PhiSuggestionHint" })
  end
  api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, {
    virt_text = first,
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
    priority = 200,
  })
  st.shown = true
  api.nvim_exec_autocmds("User", {
    pattern = "PhiSuggestion",
    modeline = false,
    data = { bufnr = bufnr, text = rest, index = st.index, count = #st.items },
  })
  return true
end

--- The user typed the start of the shown suggestion: keep showing the rest at once (no flicker,
--- no request), the edit now ending at the new cursor. False when the text typed since does not
--- match the suggestion (or the cursor went elsewhere).
typed_through = function(st, bufnr)
  local s, anchor = st.items and st.items[st.index], st.anchor
  local row, col = cursor_of(bufnr)
  if not s or not anchor or not row or row ~= anchor.row or col <= anchor.col then
    return false
  end
  if s.erow ~= row - 1 or s.ecol ~= anchor.col then
    return false -- the edit reaches past the cursor: recompute it on the server
  end
  local candidate = vim.deepcopy(s)
  candidate.ecol = col
  if not ghost_text(candidate, bufnr, row, col) then
    return false
  end
  st.items, st.index = { candidate }, 1 -- the other candidates' edits are stale now
  st.anchor = { tick = api.nvim_buf_get_changedtick(bufnr), row = row, col = col }
  return show(st, bufnr)
end

--- Ask the server for suggestions at the cursor of `bufnr` (current window). `callback(items)`
--- gets the normalised suggestions (or nil and an error); without one the result is shown as
--- ghost text, provided the buffer and cursor have not moved meanwhile and insert mode is on.
function M.fetch(bufnr, callback)
  local st = states[bufnr]
  if not st then
    return false
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  local row, col, win = cursor_of(bufnr)
  if not client or not row then
    return false
  end
  cancel(st)
  local seq = st.seq
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = INVOKED }
  local ok, request_id = client:request("textDocument/completion", params, function(err, result)
    if seq ~= st.seq then
      return -- superseded
    end
    st.cancel = nil
    if err then
      if callback then
        callback(nil, err)
      end
      return
    end
    local items = normalise(result, client, bufnr, row, col)
    if callback then
      callback(items)
      return
    end
    if api.nvim_buf_get_changedtick(bufnr) ~= tick or not in_insert_mode() then
      return
    end
    local crow, ccol = cursor_of(bufnr)
    if crow ~= row or ccol ~= col then
      return
    end
    st.items, st.index, st.anchor = items, 1, { tick = tick, row = row, col = col }
    show(st, bufnr)
  end, bufnr)
  if ok and request_id then
    st.cancel = function()
      client:cancel_request(request_id)
    end
  end
  return ok
end

--- Ask now (`now`) or after the debounce delay.
function M.request(bufnr, now)
  local st = states[bufnr]
  if not st then
    return false
  end
  stop_timer(st)
  if now or (st.opts.debounce_ms or 0) <= 0 then
    return M.fetch(bufnr)
  end
  st.timer = vim.uv.new_timer()
  st.timer:start(st.opts.debounce_ms, 0, vim.schedule_wrap(function()
    stop_timer(st)
    if states[bufnr] == st and in_insert_mode() and api.nvim_get_current_buf() == bufnr then
      M.fetch(bufnr)
    end
  end))
  return true
end

--- The suggestion on show in `bufnr`, or nil.
function M.current(bufnr)
  local st = states[bufnr]
  if not st or not st.shown or not still_at(st, bufnr) then
    return nil
  end
  return st.items[st.index]
end

--- Insert the shown suggestion (on the next tick, so this works from an <expr> mapping) and run
--- its command. Returns false when nothing is shown.
function M.accept(bufnr)
  local st = states[bufnr]
  local s = M.current(bufnr)
  if not s then
    return false
  end
  local anchor = st.anchor
  vim.schedule(function()
    if states[bufnr] ~= st or api.nvim_buf_get_changedtick(bufnr) ~= anchor.tick then
      return
    end
    cancel(st)
    if st.partial and st.partial.id == s.id then
      st.partial = nil -- the rest taken too: a whole accept, which the item's command reports
    end
    st.items = nil
    hide(st, bufnr)
    local lines = vim.split(s.text, "\n", { plain = true })
    api.nvim_buf_set_text(bufnr, s.srow, s.scol, s.erow, s.ecol, lines)
    local win = vim.fn.bufwinid(bufnr)
    if win ~= -1 then
      api.nvim_win_set_cursor(win, {
        s.srow + #lines,
        (#lines == 1 and s.scol or 0) + #lines[#lines],
      })
    end
    local client = vim.lsp.get_client_by_id(st.client_id)
    if client and s.command then
      client:exec_cmd(s.command, { bufnr = bufnr })
    end
    api.nvim_exec_autocmds("User", {
      pattern = "PhiAccept",
      modeline = false,
      data = { bufnr = bufnr, text = s.text, id = s.id },
    })
  end)
  return true
end

--- The next piece of `rest` for a partial accept: "word" (spaces, then a run of word characters
--- or of other non-space characters) or "line" (up to the end of the line; at a line break, the
--- break and the next line).
local function next_piece(rest, unit)
  if unit == "line" then
    local head = rest:match("^[^\n]+")
    return head or rest:match("^\n[^\n]*")
  end
  return rest:match("^%s*[%w_]+") or rest:match("^%s*[^%w_%s]+") or rest:match("^%s+")
end

--- Insert the next word or line of the shown suggestion and keep showing the rest. The server
--- hears of it once the suggestion is left (phi.acceptCompletion with acceptedChars, a partial
--- accept) or taken whole. Returns false when nothing is shown.
function M.accept_partial(bufnr, unit)
  local st = states[bufnr]
  local s = M.current(bufnr)
  if not s then
    return false
  end
  local row, col = cursor_of(bufnr)
  local rest = row and ghost_text(s, bufnr, row, col)
  if not rest or s.erow ~= row - 1 or s.ecol ~= col then
    return M.accept(bufnr) -- the edit reaches past the cursor: only the whole of it fits
  end
  local piece = next_piece(rest, unit)
  if not piece or piece == rest then
    return M.accept(bufnr)
  end
  local anchor = st.anchor
  vim.schedule(function()
    if states[bufnr] ~= st or api.nvim_buf_get_changedtick(bufnr) ~= anchor.tick then
      return
    end
    cancel(st)
    local lines = vim.split(piece, "\n", { plain = true })
    api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
    local nrow = row - 1 + #lines
    local ncol = (#lines == 1 and col or 0) + #lines[#lines]
    local win = vim.fn.bufwinid(bufnr)
    if win ~= -1 then
      api.nvim_win_set_cursor(win, { nrow, ncol })
    end
    local before = st.partial and st.partial.id == s.id and st.partial.chars or 0
    st.partial = { id = s.id, command = s.command, chars = before + vim.fn.strchars(piece) }
    -- The rest, as a suggestion that starts at the cursor now.
    local remaining = vim.deepcopy(s)
    remaining.text = rest:sub(#piece + 1)
    remaining.srow, remaining.scol, remaining.erow, remaining.ecol = nrow - 1, ncol, nrow - 1, ncol
    st.items, st.index = { remaining }, 1
    st.anchor = { tick = api.nvim_buf_get_changedtick(bufnr), row = nrow, col = ncol }
    show(st, bufnr)
    api.nvim_exec_autocmds("User", {
      pattern = "PhiPartialAccept",
      modeline = false,
      data = { bufnr = bufnr, text = piece, id = s.id, accepted_chars = st.partial.chars, unit = unit },
    })
  end)
  return true
end

local function server_has_command(client, name)
  local provider = client.server_capabilities.executeCommandProvider
  return type(provider) == "table" and vim.list_contains(provider.commands or {}, name)
end

--- Hide the suggestion; `explicit` (the user dismissed it) also tells the server
--- (phi.rejectCompletion). Returns false when nothing was shown.
function M.dismiss(bufnr, explicit)
  local st = states[bufnr]
  if not st then
    return false
  end
  local s = M.current(bufnr)
  local partly = s and st.partial and st.partial.id == s.id -- reported as a partial accept by hide()
  cancel(st)
  hide(st, bufnr)
  st.items = nil
  if not s then
    return false
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if explicit and not partly and s.id and client and server_has_command(client, "phi.rejectCompletion") then
    client:exec_cmd({ title = "Reject", command = "phi.rejectCompletion", arguments = { { id = s.id } } }, { bufnr = bufnr })
  end
  return true
end

--- Show the next (count > 0) or previous suggestion of the last answer.
function M.cycle(bufnr, count)
  local st = states[bufnr]
  if not M.current(bufnr) or #st.items < 2 then
    return false
  end
  st.index = (st.index - 1 + count) % #st.items + 1
  return show(st, bufnr)
end

-- -- the completion menu (vim.lsp.completion) ---------------------------------------------

local function is_ours(item, client_id)
  local client = vim.lsp.get_client_by_id(client_id or -1)
  return client and client.name == "phi_lsp"
end

--- Complete-items for our items: the menu inserts the first line (Vim cannot insert a line
--- break from the menu); the rest follows in CompleteDone.
local function convert(item)
  if item.detail ~= "phi-lsp" then
    return {}
  end
  local text = item.textEdit and item.textEdit.newText or item.insertText or item.label
  return { word = text:match("^[^\n]*"), menu = "[phi]" }
end

local function on_complete_done(bufnr)
  local done = vim.v.completed_item
  local lsp = type(done) == "table" and vim.tbl_get(done, "user_data", "nvim", "lsp") or nil
  if not lsp or not lsp.completion_item or not is_ours(lsp.completion_item, lsp.client_id) then
    return
  end
  local reason = (vim.v.event or {}).reason
  if reason and reason ~= "accept" then
    return
  end
  local item = lsp.completion_item
  local text = item.textEdit and item.textEdit.newText or item.insertText or item.label
  local first, rest = text:match("^([^\n]*)\n(.*)$")
  if not first then
    return
  end
  local row, col = cursor_of(bufnr)
  if not row then
    return
  end
  local lines = vim.split(rest, "\n", { plain = true })
  table.insert(lines, 1, "")
  api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
  api.nvim_win_set_cursor(0, { row + #lines - 1, #lines[#lines] })
end

-- -- attaching -----------------------------------------------------------------------------

--- Start suggestions for `client` in `bufnr`. opts: suggestion options from setup().
function M.attach(client, bufnr, opts)
  M.detach(bufnr)
  local st = { client_id = client.id, opts = opts or {}, seq = 0, index = 1, shown = false }
  states[bufnr] = st
  local group = api.nvim_create_augroup("phi_lsp.suggest." .. bufnr, { clear = true })

  local function moved()
    if st.shown and not still_at(st, bufnr) then
      if typed_through(st, bufnr) then
        return -- still showing the rest of it; no need to ask again
      end
      hide(st, bufnr)
      st.items = nil
    end
    if st.opts.auto_trigger ~= false and not st.shown then
      M.request(bufnr)
    end
  end
  api.nvim_create_autocmd({ "InsertEnter", "TextChangedI", "TextChangedP", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      -- InsertEnter fires before the mode changes; look once it has.
      vim.schedule(moved)
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      cancel(st)
      hide(st, bufnr)
    end,
  })

  if st.opts.popup ~= false then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = false, convert = convert })
    api.nvim_create_autocmd("CompleteDone", {
      group = group,
      buffer = bufnr,
      callback = function()
        on_complete_done(bufnr)
      end,
    })
  end
end

function M.detach(bufnr)
  local st = states[bufnr]
  if not st then
    return
  end
  cancel(st)
  hide(st, bufnr)
  states[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, "phi_lsp.suggest." .. bufnr)
  if st.opts.popup ~= false and api.nvim_buf_is_valid(bufnr) then
    pcall(vim.lsp.completion.enable, false, st.client_id, bufnr)
  end
end

return M
