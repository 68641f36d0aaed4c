// The VS Code extension itself (editors/vscode/out, compiled) with the real vscode-languageclient
// and the real phi-lsp against the real vLLM, VS Code's API played by fakeVscode.js: activation
// and server discovery, settings as initializationOptions and on change, the status bar,
// inline completions through the provider the client registers, the suppressed completion
// fallback, review on save into the diagnostic collection, the palette commands, restart and
// deactivation.
//
//   PHI_LSP_TEST_VLLM_URL=http://127.0.0.1:8765/v1 PHI_LSP_PYTHON=.venv/bin/python npm test
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { after, before, describe, it } = require('node:test');

const { createVscode, installVscode, CancellationTokenSource, Position } = require('./fakeVscode');

const VLLM_URL = process.env.PHI_LSP_TEST_VLLM_URL;
const PYTHON = process.env.PHI_LSP_PYTHON || 'python3';
const EXTENSION = path.resolve(__dirname, '..', '..', 'editors', 'vscode');
const SECOND = 1000;

if (!VLLM_URL) {
  throw new Error('PHI_LSP_TEST_VLLM_URL must name a running vLLM serving phi-code-tiny (…/v1)');
}

function defaultsFromManifest() {
  const manifest = JSON.parse(fs.readFileSync(path.join(EXTENSION, 'package.json'), 'utf8'));
  const defaults = {};
  for (const section of manifest.contributes.configuration) {
    for (const [name, schema] of Object.entries(section.properties)) defaults[name] = schema.default;
  }
  return { manifest, defaults };
}

async function eventually(description, check, ms = 30 * SECOND) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${description}${last ? `: ${last}` : ''}`);
}

describe('the VS Code extension, run on a stand-in of the VS Code API', { timeout: 10 * 60 * SECOND }, () => {
  let fake;
  let uninstall;
  let extension;
  let workspace;
  let document;
  let context;

  const vs = () => fake.state;
  const statusText = () => vs().statusItems[0]?.text ?? '';
  const output = () => vs().outputLines.join('\n');

  async function inline(doc, position) {
    const [entry] = vs().providers.inlineCompletion;
    assert.ok(entry, 'vscode-languageclient registered no inline completion provider');
    const result = await entry.provider.provideInlineCompletionItems(
      doc, position, { triggerKind: 0, selectedCompletionInfo: undefined }, new CancellationTokenSource().token,
    );
    return Array.isArray(result) ? result : (result?.items ?? []);
  }

  /** A round trip through the server, so that notifications sent before it were handled. */
  function roundTrip() {
    return fake.vscode.commands.executeCommand('phi.status');
  }

  before(() => {
    workspace = fs.mkdtempSync(path.join(os.tmpdir(), 'phi-lsp-vscode-'));
    const { defaults } = defaultsFromManifest();
    fake = createVscode({
      workspaceFolder: workspace,
      defaults,
      settings: {
        'phiLsp.server.pythonPath': PYTHON,
        'phiLsp.backend.url': VLLM_URL,
        'phiLsp.completion.model': 'phi-code-tiny',
        'phiLsp.completion.promptMode': 'raw',
        'phiLsp.completion.debounceMs': 0,
        'phiLsp.completion.minConfidence': 0,
        'phiLsp.review.model': 'phi-code-tiny',
        'phiLsp.trace.server': 'messages',
      },
    });
    uninstall = installVscode(fake.vscode);
    extension = require(path.join(EXTENSION, 'out', 'extension.js'));
  });

  after(async () => {
    try {
      await extension?.deactivate();
    } finally {
      uninstall?.();
    }
  });

  it('activates: finds the server from phiLsp.server.pythonPath and shows "ready"', { timeout: 60 * SECOND }, async () => {
    const { manifest } = defaultsFromManifest();
    context = { subscriptions: [], extension: { packageJSON: manifest, id: 'phi-lsp.phi-lsp' }, extensionPath: EXTENSION };
    const activated = extension.activate(context);
    // A file saved while the server is still starting (the client does not forward saves yet).
    const early = path.join(workspace, 'early.py');
    fs.writeFileSync(early, 'def ratio(a, b):\n    return a / b\n');
    fake.saveDocument(fake.openDocument(early, 'python', fs.readFileSync(early, 'utf8')));
    await activated;
    assert.match(output(), new RegExp(`Starting ${PYTHON.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} -P -m phi_lsp \\(from setting phiLsp.server.pythonPath\\)`));
    await eventually('the status bar to say ready', () => /Phi: ready/.test(statusText()));
    const item = vs().statusItems[0];
    assert.ok(item.shown);
    assert.match(item.tooltip, /Model: phi-code-tiny/); // from the settings sent as initializationOptions
    // The backend URL once: the server's message already names it.
    assert.equal(item.tooltip.split(VLLM_URL).length - 1, 1, item.tooltip);
    assert.equal(vs().contextKeys.get('phiLsp.running'), true);
    for (const command of ['phiLsp.reviewFile', 'phiLsp.reviewWorkspace', 'phiLsp.restartServer', 'phiLsp.showOutput', 'phiLsp.showStats']) {
      assert.ok(vs().commands.has(command), command);
    }
    // The server's commands, registered by the client so that accepting a suggestion runs phi.acceptCompletion.
    assert.ok(vs().commands.has('phi.acceptCompletion'));
    assert.deepEqual(vs().messages.filter((m) => m.kind !== 'info'), []);
  });

  it('reviews the file saved while the server was starting', { timeout: 120 * SECOND }, async () => {
    assert.match(output(), /Sending the save of early\.py made while the server was starting/);
    const stats = await eventually('the early save to be reviewed', async () => {
      const s = await fake.vscode.commands.executeCommand('phi.stats');
      return s.review.events.saves >= 1 && s.review.inFlight === 0 && s;
    }, 90 * SECOND);
    assert.ok(stats.review.reviews >= 1 && stats.review.units >= 1, JSON.stringify(stats.review));
  });

  it('shows the LSP trace when phiLsp.trace.server is "messages", without a log level to change', () => {
    assert.match(output(), /\[[\d:.]+\] Sending request 'initialize - \(0\)'/);
  });

  it('shows ghost text for `import numpy as` through the client\'s inline completion provider', { timeout: 60 * SECOND }, async () => {
    const file = path.join(workspace, 'main.py');
    fs.writeFileSync(file, 'import numpy as');
    document = fake.openDocument(file, 'python', 'import numpy as');
    const items = await inline(document, new Position(0, 15));
    assert.ok(items.length > 0, `no inline suggestion\n${output()}`);
    const text = typeof items[0].insertText === 'string' ? items[0].insertText : items[0].insertText.value;
    const start = items[0].range ? items[0].range.start.character : 15;
    assert.ok(('import numpy as'.slice(0, start) + text).startsWith('import numpy as np'), JSON.stringify(text));
    assert.equal(items[0].command?.command, 'phi.acceptCompletion');
    // Accepting runs the item's command (the client forwards it to the server).
    await fake.vscode.commands.executeCommand(items[0].command.command, ...(items[0].command.arguments ?? []));
  });

  it('does not repeat suggestions in the suggest widget (completion fallback suppressed)', async () => {
    const completion = vs().providers.completion;
    for (const { provider } of completion) {
      const result = await provider.provideCompletionItems(document, new Position(0, 15), new CancellationTokenSource().token, { triggerKind: 0 });
      assert.ok(result === undefined || result === null || (Array.isArray(result) ? result : result.items).length === 0);
    }
  });

  it('sends changed settings to the running server (completion.enabled off and on)', { timeout: 60 * SECOND }, async () => {
    fake.changeSettings({ 'phiLsp.completion.enabled': false });
    await roundTrip();
    assert.deepEqual(await inline(document, new Position(0, 15)), []);
    fake.changeSettings({ 'phiLsp.completion.enabled': true });
    await roundTrip();
    assert.ok((await inline(document, new Position(0, 15))).length > 0);
    assert.doesNotMatch(output(), /Restarting phi-lsp/);
  });

  it('reviews on save into the phi-review diagnostic collection; "Review File" reports the count', { timeout: 300 * SECOND }, async () => {
    const text = 'import numpy as np\n\n\ndef average(values):\n    return sum(values) / len(values)\n';
    fake.changeDocument(document, text);
    fs.writeFileSync(document.uri.fsPath, text);
    const published = new Promise((resolve) => {
      const d = vs().diagnosticSets.event((e) => {
        if (e.uri === document.uri.toString()) {
          d.dispose();
          resolve(e);
        }
      });
    });
    fake.saveDocument(document);
    const set = await published;
    assert.equal(set.name, 'phi-review');
    for (const diagnostic of set.diagnostics) {
      assert.equal(diagnostic.source, 'phi-review');
      assert.ok(diagnostic.message);
    }
    await fake.vscode.commands.executeCommand('phiLsp.reviewFile', document.uri);
    assert.match(vs().statusBarMessages.at(-1) ?? '', /^phi-lsp: \d+ findings? in main\.py$/);
    assert.deepEqual(vs().messages.filter((m) => m.kind === 'error'), []);
  });

  it('"Review Workspace" and "Show Statistics" run the server commands without errors', { timeout: 300 * SECOND }, async (t) => {
    await fake.vscode.commands.executeCommand('phiLsp.reviewWorkspace');
    assert.match(vs().statusBarMessages.at(-1) ?? '', /^phi-lsp: \d+ findings? in \d+ files?$/);
    await fake.vscode.commands.executeCommand('phiLsp.showStats');
    await fake.vscode.commands.executeCommand('phiLsp.showStats');
    assert.deepEqual(vs().messages.filter((m) => m.kind === 'error'), []);
    // One read-only virtual document, refreshed in place, not an Untitled document per run.
    const shown = vs().shownDocuments ?? [];
    assert.equal(shown.length, 2);
    assert.equal(shown[0], shown[1]);
    assert.equal(shown[0].uri.scheme, 'phi-lsp-stats');
    assert.ok(JSON.parse(shown[0].getText()).status, shown[0].getText().slice(0, 200));
    t.diagnostic(`status bar messages: ${JSON.stringify(vs().statusBarMessages)}`);
  });

  it('restarts the server when a setting sent at start-up is removed, and on "Restart Server"', { timeout: 120 * SECOND }, async () => {
    const starts = () => (output().match(/\] Starting /g) ?? []).length;
    assert.equal(starts(), 1);
    fake.changeSettings({ 'phiLsp.completion.minConfidence': undefined });
    await eventually('a second start', () => starts() === 2);
    await eventually('ready again', () => /Phi: ready/.test(statusText()));
    await fake.vscode.commands.executeCommand('phiLsp.restartServer');
    assert.equal(starts(), 3);
    await eventually('ready again', () => /Phi: ready/.test(statusText()));
    const file = path.join(workspace, 'again.py');
    fs.writeFileSync(file, 'import numpy as');
    const again = fake.openDocument(file, 'python', 'import numpy as');
    let items;
    try {
      items = await inline(again, new Position(0, 15));
    } catch (error) {
      throw new Error(`${error.message}\n${vs().outputLines.slice(-60).join('\n')}`);
    }
    assert.ok(items.length > 0, 'completions work after the restart');
  });

  it('stops the server on deactivate (shutdown, exit code 0), writing to no closed channel', { timeout: 60 * SECOND }, async () => {
    const { pid } = (await fake.vscode.commands.executeCommand('phi.stats')).process;
    // As VS Code does: deactivate() is called, and the subscriptions are disposed at once.
    const deactivated = extension.deactivate();
    for (const subscription of context.subscriptions) subscription.dispose();
    await deactivated;
    extension = undefined;
    // The output channel closes after the stop; later lines are dropped, never written to it closed.
    assert.deepEqual(vs().closedChannelWrites, []);
    assert.equal(vs().contextKeys.get('phiLsp.running'), false);
    const starts = (output().match(/\] Starting /g) ?? []).length;
    // The servers stopped by the two restarts said so in the channel; the last one is gone too.
    await eventually('the restarted servers to exit cleanly', () => (output().match(/Server process exited successfully/g) ?? []).length >= starts - 1);
    await eventually('the last server process to exit', () => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    });
  });
});
