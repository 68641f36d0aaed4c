// phi-lsp driven end to end by a Node LSP client built on vscode-languageserver-protocol (the
// protocol library VS Code's client is built on), offering the capabilities VS Code's client
// sends, against a real vLLM serving phi-code-tiny.
//
//   PHI_LSP_TEST_VLLM_URL=http://127.0.0.1:8765/v1 PHI_LSP_PYTHON=.venv/bin/python npm test
//
// editors/vscode must have its node_modules (`npm ci` there): the capabilities come from it.
// One server for the whole file; the steps run in order and share it.
'use strict';

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const { after, before, describe, it } = require('node:test');

const lsp = require('vscode-languageserver-protocol/node');
const { vscodeClientCapabilities } = require('./vscodeCapabilities');

const VLLM_URL = process.env.PHI_LSP_TEST_VLLM_URL;
const PYTHON = process.env.PHI_LSP_PYTHON || 'python3';
const MODEL = 'phi-code-tiny';
const REVIEW_SOURCE = 'phi-review';
const STATES = ['starting', 'ready', 'busy', 'unreachable', 'error', 'disabled'];
const CONTRACT_COMMANDS = ['phi.review', 'phi.reviewWorkspace', 'phi.acceptCompletion', 'phi.rejectCompletion', 'phi.stats'];
const REQUEST_CANCELLED = -32800; // LSPErrorCodes.RequestCancelled

const SECOND = 1000;
const COMPLETION_MS = 60 * SECOND; // CPU vLLM, shared machine
const REVIEW_MS = 240 * SECOND;

if (!VLLM_URL) {
  throw new Error('PHI_LSP_TEST_VLLM_URL must name a running vLLM serving phi-code-tiny (…/v1)');
}

const initializationOptions = {
  backend: { url: VLLM_URL },
  completion: { model: MODEL, promptMode: 'raw', debounceMs: 0, minConfidence: 0 },
  review: { model: MODEL },
};

// -- the session -------------------------------------------------------------------------------

/** Everything seen on the wire, both ways, plus the server process. */
class Session {
  constructor(workspace) {
    this.workspace = workspace;
    this.notifications = []; // { method, params }
    this.serverRequests = []; // { method, params }
    this.sentRequestIds = [];
    this.responses = new Map(); // id -> count
    this.strayResponses = [];
    this.stderr = '';
    this.waiters = new Set();
    this.configuration = { ...initializationOptions };
    this.versions = new Map();
    this.texts = new Map();

    this.proc = spawn(PYTHON, ['-m', 'phi_lsp'], { cwd: workspace, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env } });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    this.proc.stderr.on('data', (chunk) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-20_000);
    });

    // A second reader on the same stdout sees every message the server writes: it counts the
    // answers to each request id (exactly one each).
    const tap = new lsp.StreamMessageReader(this.proc.stdout);
    tap.listen((message) => {
      if ('id' in message && !('method' in message)) {
        this.responses.set(message.id, (this.responses.get(message.id) ?? 0) + 1);
      }
    });

    const session = this;
    class RecordingWriter extends lsp.StreamMessageWriter {
      write(message) {
        if ('method' in message && 'id' in message) {
          session.sentRequestIds.push(message.id);
        }
        return super.write(message);
      }
    }
    this.connection = lsp.createProtocolConnection(new lsp.StreamMessageReader(this.proc.stdout), new RecordingWriter(this.proc.stdin));
    this.connection.onNotification((method, params) => {
      this.notifications.push({ method, params });
      this.wake();
    });
    this.connection.onRequest((method, params) => {
      this.serverRequests.push({ method, params });
      this.wake();
      return this.answerServerRequest(method, params);
    });
    this.connection.listen();
  }

  /** What VS Code answers to the server's own requests. */
  answerServerRequest(method, params) {
    switch (method) {
      case 'workspace/configuration':
        // The extension answers section "phiLsp" with its settings minus extension-only keys.
        return params.items.map((item) => (item.section === 'phiLsp' ? this.configuration : null));
      case 'window/workDoneProgress/create':
      case 'client/registerCapability':
      case 'client/unregisterCapability':
      case 'window/showMessageRequest':
        return null;
      case 'workspace/workspaceFolders':
        return [{ uri: pathToFileURL(this.workspace).href, name: 'ws' }];
      case 'workspace/applyEdit':
        return { applied: false, failureReason: 'the test client applies no edits' };
      default:
        return new lsp.ResponseError(lsp.ErrorCodes.MethodNotFound, `the test client does not handle ${method}`);
    }
  }

  wake() {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** The first entry of `list()` at index >= from that matches, waiting up to `ms`. */
  waitFor(description, list, match, { from = 0, ms = 30 * SECOND } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const items = list();
        for (let i = from; i < items.length; i++) {
          if (match(items[i])) {
            cleanup();
            resolve(items[i]);
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${ms} ms waiting for ${description}\n${this.context()}`));
      }, ms);
      const cleanup = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  waitForNotification(method, match = () => true, options = {}) {
    return this.waitFor(`a ${method} notification`, () => this.notifications, (n) => n.method === method && match(n.params), options).then((n) => n.params);
  }

  request(type, params, token) {
    return withTimeout(this.connection.sendRequest(type, params, token), COMPLETION_MS, `${type.method ?? type}\n${this.context()}`);
  }

  context() {
    const methods = this.notifications.map((n) => n.method).slice(-15).join(', ');
    return `last notifications: [${methods}]\nserver stderr (tail):\n${this.stderr.slice(-3000)}`;
  }

  // Documents, as VS Code sends them.
  open(name, text) {
    const file = path.join(this.workspace, name);
    fs.writeFileSync(file, text);
    const uri = pathToFileURL(file).href;
    this.versions.set(uri, 1);
    this.texts.set(uri, text);
    this.connection.sendNotification(lsp.DidOpenTextDocumentNotification.type, { textDocument: { uri, languageId: 'python', version: 1, text } });
    return uri;
  }

  /** An incremental edit: insert `inserted` at the end of the document. */
  append(uri, inserted) {
    const text = this.texts.get(uri);
    const end = endOf(text);
    const version = this.versions.get(uri) + 1;
    this.versions.set(uri, version);
    this.texts.set(uri, text + inserted);
    this.connection.sendNotification(lsp.DidChangeTextDocumentNotification.type, {
      textDocument: { uri, version },
      contentChanges: [{ range: { start: end, end }, rangeLength: 0, text: inserted }],
    });
  }

  save(uri) {
    fs.writeFileSync(new URL(uri), this.texts.get(uri));
    this.connection.sendNotification(lsp.DidSaveTextDocumentNotification.type, { textDocument: { uri } });
  }

  inlineCompletion(uri, position, token, triggerKind = lsp.InlineCompletionTriggerKind.Automatic) {
    return this.connection.sendRequest(
      lsp.InlineCompletionRequest.type,
      { textDocument: { uri }, position, context: { triggerKind } },
      token,
    );
  }
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms: ${what}`)), ms);
    }),
  ]);
}

function lines(text) {
  return text.split(/\r\n|\r|\n/);
}

function endOf(text) {
  const all = lines(text);
  return { line: all.length - 1, character: all[all.length - 1].length };
}

function isPosition(p) {
  return p && Number.isInteger(p.line) && p.line >= 0 && Number.isInteger(p.character) && p.character >= 0;
}

function assertRange(range, text, what) {
  assert.ok(range && isPosition(range.start) && isPosition(range.end), `${what}: not a range: ${JSON.stringify(range)}`);
  const all = lines(text);
  for (const p of [range.start, range.end]) {
    assert.ok(p.line < all.length, `${what}: line ${p.line} is past the document's ${all.length} lines`);
    assert.ok(p.character <= all[p.line].length, `${what}: character ${p.character} is past the end of line ${p.line}`);
  }
  const before = range.start.line < range.end.line || (range.start.line === range.end.line && range.start.character <= range.end.character);
  assert.ok(before, `${what}: range ends before it starts: ${JSON.stringify(range)}`);
}

/** Items of an inline completion answer (InlineCompletionList or InlineCompletionItem[]). */
function itemsOf(result) {
  if (result === null || result === undefined) return [];
  if (Array.isArray(result)) return result;
  assert.ok(Array.isArray(result.items), `not an InlineCompletionList: ${JSON.stringify(result)}`);
  return result.items;
}

/** Checks an inline completion item against CONTRACT.md; returns the cursor line as it reads once accepted. */
function acceptedLine(item, text, position) {
  assert.equal(typeof item.insertText, 'string', `insertText must be a plain string: ${JSON.stringify(item)}`);
  assert.ok(item.insertText.length > 0, 'an empty suggestion was sent instead of no suggestion');
  const line = lines(text)[position.line];
  let start = position.character;
  if (item.range !== undefined) {
    assertRange(item.range, text, 'inline completion range');
    assert.equal(item.range.start.line, position.line, 'the range must be on the cursor line');
    assert.deepEqual(item.range.end, position, 'the range must end at the cursor');
    start = item.range.start.character;
  }
  if (item.command !== undefined) {
    assert.equal(item.command.command, 'phi.acceptCompletion');
    assert.ok(Array.isArray(item.command.arguments) && item.command.arguments.length === 1, 'phi.acceptCompletion takes [ { id } ]');
    assert.ok(item.command.arguments[0].id !== undefined, 'phi.acceptCompletion needs the suggestion id');
    assert.equal(typeof item.command.title, 'string');
  }
  return line.slice(0, start) + item.insertText;
}

function assertStatus(status) {
  assert.ok(STATES.includes(status.state), `phi/status state ${JSON.stringify(status.state)} is not one of ${STATES}`);
  for (const key of ['message', 'model', 'url']) {
    assert.equal(typeof status[key], 'string', `phi/status ${key} must be a string: ${JSON.stringify(status)}`);
  }
}

function assertDiagnostic(diagnostic, text) {
  assertRange(diagnostic.range, text, 'diagnostic');
  assert.equal(diagnostic.source, REVIEW_SOURCE);
  assert.equal(typeof diagnostic.message, 'string');
  assert.ok(diagnostic.message.trim().length > 0, 'a diagnostic needs a message');
  assert.ok([1, 2, 3, 4].includes(diagnostic.severity), `severity ${diagnostic.severity}`);
  assert.equal(typeof diagnostic.code, 'string', 'code is the finding category');
  assert.ok(diagnostic.data && diagnostic.data.findingId !== undefined, 'data.findingId is required');
  if (diagnostic.data.replacement !== undefined) {
    assert.equal(typeof diagnostic.data.replacement, 'string');
  }
}

/** A code action's edits, checked: only this document, at its current version, valid ranges. */
function assertQuickFixEdit(action, uri, version, text) {
  const edit = action.edit;
  assert.ok(edit, `quick fix "${action.title}" has no edit`);
  const edits = [];
  for (const change of edit.documentChanges ?? []) {
    assert.ok(change.textDocument, 'a quick fix only edits text');
    assert.equal(change.textDocument.uri, uri);
    assert.equal(change.textDocument.version, version, 'the edit must be for the current version');
    edits.push(...change.edits);
  }
  for (const [target, changes] of Object.entries(edit.changes ?? {})) {
    assert.equal(target, uri);
    edits.push(...changes);
  }
  assert.ok(edits.length > 0, `quick fix "${action.title}" edits nothing`);
  for (const e of edits) {
    assertRange(e.range, text, 'quick fix edit');
    assert.equal(typeof e.newText, 'string');
  }
}

// -- the steps ---------------------------------------------------------------------------------

describe('phi-lsp with a VS Code-like client (vscode-languageserver-protocol)', { timeout: 15 * 60 * SECOND }, () => {
  let s;
  let initializeResult;
  let mainUri;

  before(() => {
    const workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'phi-lsp-node-'));
    s = new Session(workspace);
  });

  after(async () => {
    if (s && s.proc.exitCode === null) {
      s.proc.kill();
      await s.exited;
    }
    s?.connection.dispose();
  });

  it('initializes with the capabilities of VS Code\'s client and announces phi/status', { timeout: 60 * SECOND }, async () => {
    const { capabilities, clientInfo } = vscodeClientCapabilities();
    const uri = pathToFileURL(s.workspace).href;
    initializeResult = await s.request(lsp.InitializeRequest.type, {
      processId: process.pid,
      clientInfo,
      locale: 'en',
      rootPath: s.workspace,
      rootUri: uri,
      capabilities,
      initializationOptions,
      trace: 'off',
      workspaceFolders: [{ uri, name: 'ws' }],
    });
    const caps = initializeResult.capabilities;
    // VS Code's client refuses any other encoding.
    assert.equal(caps.positionEncoding ?? 'utf-16', 'utf-16');
    const sync = caps.textDocumentSync;
    assert.equal(typeof sync === 'number' ? sync : sync.change, lsp.TextDocumentSyncKind.Incremental);
    if (typeof sync === 'object') {
      assert.ok(sync.openClose, 'didOpen/didClose are needed');
      assert.ok(sync.save, 'didSave is needed for review on save');
    }
    assert.ok(caps.codeActionProvider, 'codeActionProvider (quick fixes from findings)');
    const commands = caps.executeCommandProvider?.commands ?? [];
    for (const command of CONTRACT_COMMANDS) {
      assert.ok(commands.includes(command), `executeCommandProvider lacks ${command} (has ${commands})`);
    }
    assert.equal(initializeResult.serverInfo?.name, 'phi-lsp');

    const from = s.notifications.length;
    await s.connection.sendNotification(lsp.InitializedNotification.type, {});
    const status = await s.waitForNotification('phi/status', () => true, { from });
    assertStatus(status);
    // backend.url is set: no managed model to start, so the first state says ready (or busy).
    const ready = status.state === 'ready' || status.state === 'busy'
      ? status
      : await s.waitForNotification('phi/status', (p) => p.state === 'ready', { from });
    assert.equal(ready.url.replace(/\/+$/, ''), VLLM_URL.replace(/\/+$/, ''));
    // phi.status answers the same object.
    const asked = await s.request(lsp.ExecuteCommandRequest.type, { command: 'phi.status', arguments: [] });
    assertStatus(asked);
  });

  it('offers inline completion (statically or by registration)', { timeout: 10 * SECOND }, async () => {
    const registered = s.serverRequests.some(
      (r) => r.method === 'client/registerCapability' && r.params.registrations.some((x) => x.method === 'textDocument/inlineCompletion'),
    );
    assert.ok(initializeResult.capabilities.inlineCompletionProvider || registered, 'no textDocument/inlineCompletion provider');
  });

  it('completes `import numpy as` with ` np`', { timeout: COMPLETION_MS }, async (t) => {
    mainUri = s.open('main.py', 'import numpy as');
    const position = { line: 0, character: 'import numpy as'.length };
    const result = await s.inlineCompletion(mainUri, position);
    const items = itemsOf(result);
    assert.ok(items.length > 0, `no suggestion for "import numpy as": ${JSON.stringify(result)}\n${s.context()}`);
    const accepted = items.map((item) => acceptedLine(item, s.texts.get(mainUri), position));
    t.diagnostic(`accepted line(s): ${JSON.stringify(accepted)}`);
    assert.ok(accepted.some((line) => line.startsWith('import numpy as np')), `suggestions: ${JSON.stringify(accepted)}`);
  });

  it('completes `def add(a, b):\\n    return` with ` a + b` after incremental edits, and takes the accept command', { timeout: COMPLETION_MS }, async (t) => {
    s.append(mainUri, ' np\n\n');
    s.append(mainUri, 'def add(a, b):\n');
    s.append(mainUri, '    return');
    const text = s.texts.get(mainUri);
    const position = endOf(text);
    const result = await s.inlineCompletion(mainUri, position, undefined, lsp.InlineCompletionTriggerKind.Invoked);
    const items = itemsOf(result);
    assert.ok(items.length > 0, `no suggestion after "return": ${JSON.stringify(result)}\n${s.context()}`);
    const accepted = items.map((item) => acceptedLine(item, text, position));
    t.diagnostic(`accepted line(s): ${JSON.stringify(accepted)}`);
    assert.ok(accepted.some((line) => line.replace(/\s+$/, '').startsWith('    return a + b')), `suggestions: ${JSON.stringify(accepted)}`);
    // VS Code runs the item's command when the user accepts it.
    const command = items[0].command;
    if (command) {
      await s.request(lsp.ExecuteCommandRequest.type, { command: command.command, arguments: command.arguments });
    }
  });

  it('answers a cancelled inline completion exactly once (RequestCancelled or empty)', { timeout: COMPLETION_MS }, async (t) => {
    s.append(mainUri, ' a + b\n\n\ndef multiply(x, y):\n    return');
    const position = endOf(s.texts.get(mainUri));
    for (const delay of [0, 20, 200]) {
      const source = new lsp.CancellationTokenSource();
      const pending = s.inlineCompletion(mainUri, position, source.token);
      setTimeout(() => source.cancel(), delay); // sends $/cancelRequest
      let outcome;
      try {
        outcome = { result: await withTimeout(pending, COMPLETION_MS, `cancelled inline completion\n${s.context()}`) };
      } catch (error) {
        outcome = { error };
      }
      t.diagnostic(`cancelled after ${delay} ms: ${outcome.error ? `error ${outcome.error.code}` : `${itemsOf(outcome.result).length} item(s)`}`);
      if (outcome.error) {
        assert.ok(outcome.error instanceof lsp.ResponseError, `cancelled request failed locally: ${outcome.error}`);
        assert.equal(outcome.error.code, REQUEST_CANCELLED, `cancelled request answered with error ${outcome.error.code}: ${outcome.error.message}`);
      } else {
        // Finished before the cancel arrived: any well-formed answer is fine.
        for (const item of itemsOf(outcome.result)) acceptedLine(item, s.texts.get(mainUri), position);
      }
    }
    // And the server still works afterwards.
    await s.request(lsp.ExecuteCommandRequest.type, { command: 'phi.status', arguments: [] });
  });

  it('follows didChangeConfiguration, pushed and pulled', { timeout: 2 * COMPLETION_MS }, async () => {
    const position = { line: 0, character: 'import numpy as'.length };
    const probeUri = s.open('probe.py', 'import numpy as');
    // Pushed: completions off.
    s.configuration = { ...initializationOptions, completion: { ...initializationOptions.completion, enabled: false } };
    await s.connection.sendNotification(lsp.DidChangeConfigurationNotification.type, { settings: s.configuration });
    await s.request(lsp.ExecuteCommandRequest.type, { command: 'phi.status', arguments: [] });
    const off = itemsOf(await s.request(lsp.InlineCompletionRequest.type, { textDocument: { uri: probeUri }, position, context: { triggerKind: 1 } }));
    assert.deepEqual(off, [], 'completion.enabled = false must silence inline completion');
    // Pulled: a notification without settings makes the server ask for section phiLsp.
    s.configuration = { ...initializationOptions };
    const from = s.serverRequests.length;
    await s.connection.sendNotification(lsp.DidChangeConfigurationNotification.type, { settings: null });
    await s.waitFor('workspace/configuration for section phiLsp', () => s.serverRequests,
      (r) => r.method === 'workspace/configuration' && r.params.items.some((i) => i.section === 'phiLsp'), { from });
    await s.request(lsp.ExecuteCommandRequest.type, { command: 'phi.status', arguments: [] });
    const on = itemsOf(await s.request(lsp.InlineCompletionRequest.type, { textDocument: { uri: probeUri }, position, context: { triggerKind: 1 } }));
    assert.ok(on.length > 0, 'completions must come back once the pulled settings enable them again');
    s.connection.sendNotification(lsp.DidCloseTextDocumentNotification.type, { textDocument: { uri: probeUri } });
  });

  let diagnostics = [];
  let reviewUri;

  it('reviews on save: publishDiagnostics arrives, every phi-review diagnostic well-formed', { timeout: REVIEW_MS + 10 * SECOND }, async (t) => {
    reviewUri = s.open('review_me.py', [
      'import os',
      '',
      '',
      'def read_config(path):',
      '    f = open(path)',
      '    data = f.read()',
      '    return eval(data)',
      '',
      '',
      'def average(values):',
      '    total = 0',
      '    for v in values:',
      '        total += v',
      '    return total / len(values)',
      '',
    ].join('\n'));
    const from = s.notifications.length;
    s.save(reviewUri);
    const published = await s.waitForNotification('textDocument/publishDiagnostics', (p) => p.uri === reviewUri, { from, ms: REVIEW_MS });
    assert.ok(Array.isArray(published.diagnostics));
    if (published.version !== undefined && published.version !== null) {
      assert.equal(published.version, s.versions.get(reviewUri));
    }
    diagnostics = published.diagnostics.filter((d) => d.source === REVIEW_SOURCE);
    t.diagnostic(`${published.diagnostics.length} diagnostic(s) after save: ${JSON.stringify(published.diagnostics.map((d) => d.message))}`);
    for (const diagnostic of published.diagnostics) assertDiagnostic(diagnostic, s.texts.get(reviewUri));
  });

  it('answers codeAction with well-formed quick fixes for the findings', { timeout: COMPLETION_MS }, async (t) => {
    const text = s.texts.get(reviewUri);
    const whole = { start: { line: 0, character: 0 }, end: endOf(text) };
    const result = await s.request(lsp.CodeActionRequest.type, {
      textDocument: { uri: reviewUri },
      range: whole,
      context: { diagnostics, triggerKind: lsp.CodeActionTriggerKind.Invoked },
    });
    assert.ok(result === null || Array.isArray(result), `codeAction must answer a list or null: ${JSON.stringify(result)}`);
    const actions = [];
    for (let action of result ?? []) {
      assert.equal(typeof action.title, 'string');
      if (typeof action.command === 'string') continue; // a plain Command
      if (action.edit === undefined && action.data !== undefined) {
        // VS Code's client declares resolveSupport for `edit`.
        action = await s.request(lsp.CodeActionResolveRequest.type, action);
      }
      if ((action.kind ?? '').startsWith('quickfix')) {
        assertQuickFixEdit(action, reviewUri, s.versions.get(reviewUri), text);
      }
      actions.push(action);
    }
    t.diagnostic(`${actions.length} code action(s): ${JSON.stringify(actions.map((a) => a.title))}`);
    for (const diagnostic of diagnostics.filter((d) => typeof d.data?.replacement === 'string')) {
      const fix = actions.find((a) => (a.kind ?? '').startsWith('quickfix') && (a.diagnostics ?? []).some((d) => d.data?.findingId === diagnostic.data.findingId));
      assert.ok(fix, `no quick fix for finding ${diagnostic.data.findingId} that has a replacement`);
    }
    // A range with no findings gets no quick fixes.
    const none = await s.request(lsp.CodeActionRequest.type, {
      textDocument: { uri: mainUri },
      range: { start: { line: 0, character: 0 }, end: { line: 0, character: 0 } },
      context: { diagnostics: [], only: ['quickfix'], triggerKind: lsp.CodeActionTriggerKind.Automatic },
    });
    assert.ok(none === null || (Array.isArray(none) && none.length === 0), `quick fixes without findings: ${JSON.stringify(none)}`);
  });

  it('clears the phi-review diagnostics of a closed file', { timeout: 30 * SECOND }, async () => {
    const from = s.notifications.length;
    s.connection.sendNotification(lsp.DidCloseTextDocumentNotification.type, { textDocument: { uri: reviewUri } });
    await s.waitForNotification('textDocument/publishDiagnostics', (p) => p.uri === reviewUri && p.diagnostics.length === 0, { from });
  });

  it('shuts down, exits with code 0, and answered every request exactly once', { timeout: 60 * SECOND }, async () => {
    assert.equal(await s.request(lsp.ShutdownRequest.type, undefined), null);
    await s.connection.sendNotification(lsp.ExitNotification.type);
    const { code, signal } = await withTimeout(s.exited, 30 * SECOND, 'the server to exit after exit');
    assert.equal(signal, null, `killed by ${signal}\n${s.context()}`);
    assert.equal(code, 0, `exit code ${code}\n${s.context()}`);
    const unanswered = s.sentRequestIds.filter((id) => !s.responses.has(id));
    const twice = [...s.responses].filter(([, count]) => count > 1).map(([id]) => id);
    const unknown = [...s.responses.keys()].filter((id) => !s.sentRequestIds.includes(id));
    assert.deepEqual({ unanswered, twice, unknown }, { unanswered: [], twice: [], unknown: [] });
  });
});
