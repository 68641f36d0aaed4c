// Unit tests of the extension's plain-Node parts (run after `npm run compile`): `npm test`.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { describe, it } = require('node:test');

const { resolveServerCommand, which, expand, ServerNotFound } = require('../out/serverCommand');
const { SettingsTracker, serverKeysFromManifest, explicitValue, isServerKey } = require('../out/settings');
const { present, isPhiStatus } = require('../out/status');
const { PendingSaves, closable, savedBeforeActivation } = require('../out/startup');
const { TraceChannel, LOG_LEVEL } = require('../out/trace');

const manifest = require('../package.json');

function probe(overrides = {}) {
  return {
    which: () => undefined,
    pythonExtension: async () => undefined,
    importsPhiLsp: async () => false,
    platform: 'linux',
    ...overrides,
  };
}

describe('server command discovery', () => {
  it('uses phiLsp.server.path first, with the extra args', async () => {
    const found = await resolveServerCommand(
      { path: '/opt/phi/bin/phi-lsp', pythonPath: '/usr/bin/python3', args: ['--config', 'x.toml'] },
      probe({ which: () => '/usr/bin/phi-lsp' }),
    );
    assert.deepEqual([found.command, found.args], ['/opt/phi/bin/phi-lsp', ['--config', 'x.toml']]);
  });

  it('then phiLsp.server.pythonPath with -m phi_lsp', async () => {
    const found = await resolveServerCommand({ path: '  ', pythonPath: '/venv/bin/python' }, probe({ which: () => '/usr/bin/phi-lsp' }));
    assert.deepEqual([found.command, found.args], ['/venv/bin/python', ['-P', '-m', 'phi_lsp']]);
  });

  it('then phi-lsp on PATH', async () => {
    const found = await resolveServerCommand({}, probe({ which: (name) => (name === 'phi-lsp' ? '/usr/local/bin/phi-lsp' : undefined) }));
    assert.deepEqual([found.command, found.args], ['/usr/local/bin/phi-lsp', []]);
  });

  it("then the Python extension's interpreter, when phi_lsp imports there", async () => {
    const found = await resolveServerCommand(
      {},
      probe({ pythonExtension: async () => '/ws/.venv/bin/python', importsPhiLsp: async (py) => py === '/ws/.venv/bin/python' }),
    );
    assert.deepEqual([found.command, found.args], ['/ws/.venv/bin/python', ['-P', '-m', 'phi_lsp']]);
  });

  it('then python3 (python on Windows)', async () => {
    const found = await resolveServerCommand(
      {},
      probe({ pythonExtension: async () => '/no/phi/python', importsPhiLsp: async (py) => py === 'python3' }),
    );
    assert.deepEqual([found.command, found.args], ['python3', ['-P', '-m', 'phi_lsp']]);
    const windows = await resolveServerCommand({}, probe({ platform: 'win32', importsPhiLsp: async (py) => py === 'python' }));
    assert.equal(windows.command, 'python');
  });

  it('says what it tried when nothing has phi-lsp', async () => {
    await assert.rejects(
      resolveServerCommand({}, probe({ pythonExtension: async () => { throw new Error('no api'); } })),
      (error) => error instanceof ServerNotFound && /phi-lsp on PATH/.test(error.message) && /python3 has no phi_lsp/.test(error.message),
    );
  });

  it('expands ~, ${workspaceFolder} and ${env:NAME} in paths and args', async () => {
    const where = { home: '/home/ada', workspaceFolder: '/src/app' };
    assert.equal(expand('~/.phi/bin/phi-lsp', where), '/home/ada/.phi/bin/phi-lsp');
    assert.equal(expand('${workspaceFolder}/.venv/bin/python', where), '/src/app/.venv/bin/python');
    assert.equal(expand('${env:PHI_HOME}/x', where, { PHI_HOME: '/opt/phi' }), '/opt/phi/x');
    assert.equal(expand('/a~b', where), '/a~b');
    const found = await resolveServerCommand(
      { pythonPath: '${workspaceFolder}/.venv/bin/python', args: ['--config', '${workspaceFolder}/phi.toml'], ...where },
      probe(),
    );
    assert.deepEqual([found.command, found.args], ['/src/app/.venv/bin/python', ['-P', '-m', 'phi_lsp', '--config', '/src/app/phi.toml']]);
  });

  it('which() finds executables only', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'phi-which-'));
    fs.writeFileSync(path.join(dir, 'phi-lsp'), '#!/bin/sh\n', { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'not-exec'), '', { mode: 0o644 });
    const env = { PATH: ['/nonexistent', dir].join(path.delimiter) };
    assert.equal(which('phi-lsp', env, 'linux'), path.join(dir, 'phi-lsp'));
    assert.equal(which('not-exec', env, 'linux'), undefined);
    assert.equal(which('missing', env, 'linux'), undefined);
  });
});

describe('settings sent to the server', () => {
  const keys = serverKeysFromManifest(manifest);

  it('are the manifest phiLsp.* keys minus the extension-only ones', () => {
    assert.ok(keys.has('backend.url'));
    assert.ok(keys.has('completion.debounceMs'));
    assert.ok(![...keys.keys()].some((key) => key.startsWith('server.') || key.startsWith('trace.')));
    assert.equal(isServerKey('server.path'), false);
    assert.equal(keys.get('completion.debounceMs'), 60);
  });

  it('take the most specific scope the user set', () => {
    assert.equal(explicitValue({ globalValue: 1, workspaceValue: 2 }), 2);
    assert.equal(explicitValue({ globalValue: 1, workspaceValue: 2, workspaceFolderValue: 3 }), 3);
    assert.equal(explicitValue({ globalValue: null }), null);
    assert.equal(explicitValue({}), undefined);
    assert.equal(explicitValue(undefined), undefined);
  });

  it('send only explicit values, nested, and say which were removed since start', () => {
    const user = new Map([
      ['backend.url', { globalValue: 'http://gpu:8000/v1' }],
      ['completion.debounceMs', { workspaceValue: 0 }],
      ['server.path', { globalValue: '/x/phi-lsp' }],
    ]);
    const tracker = new SettingsTracker(keys, (key) => user.get(key));
    assert.deepEqual(tracker.initializationOptions(), {
      backend: { url: 'http://gpu:8000/v1' },
      completion: { debounceMs: 0 },
    });
    user.set('review.onSave', { globalValue: false });
    assert.deepEqual(tracker.removedSinceStart(), []);
    assert.deepEqual(tracker.current(), {
      backend: { url: 'http://gpu:8000/v1' },
      completion: { debounceMs: 0 },
      review: { onSave: false },
    });
    user.delete('completion.debounceMs');
    assert.deepEqual(tracker.removedSinceStart(), ['completion.debounceMs']);
    tracker.initializationOptions(); // the restart
    assert.deepEqual(tracker.removedSinceStart(), []);
  });

  it('send nothing when the user set nothing (pyproject.toml and the demo-model fallback stay in charge)', () => {
    const tracker = new SettingsTracker(keys, () => ({}));
    assert.deepEqual(tracker.initializationOptions(), {});
    assert.deepEqual(tracker.current(), {});
  });
});

describe('status bar', () => {
  it('says ready, busy, unreachable in words', () => {
    assert.match(present({ state: 'ready', model: 'phi-code-tiny', url: 'http://h/v1' }).text, /Phi: ready/);
    assert.match(present({ state: 'busy' }).text, /Phi: busy/);
    const down = present({ state: 'unreachable', message: 'connection refused', url: 'http://h/v1' });
    assert.match(down.text, /unreachable/);
    assert.equal(down.background, 'statusBarItem.warningBackground');
    assert.match(down.tooltip, /connection refused/);
    assert.match(down.tooltip, /http:\/\/h\/v1/);
    assert.match(present({ state: 'something-new' }).text, /something-new/);
  });

  it('names the backend URL once when the message already says it', () => {
    const ready = present({ state: 'ready', message: 'Using http://h:8000/v1', model: 'm', url: 'http://h:8000/v1' });
    assert.equal(ready.tooltip.split('http://h:8000/v1').length - 1, 1, ready.tooltip);
    assert.match(present({ state: 'ready', url: 'http://h:8000/v1' }).tooltip, /Backend: http:\/\/h:8000\/v1/);
  });

  it('checks the phi/status shape', () => {
    assert.ok(isPhiStatus({ state: 'ready', message: '', model: 'm', url: 'u' }));
    assert.ok(!isPhiStatus({ state: 3 }));
    assert.ok(!isPhiStatus(null));
    assert.ok(!isPhiStatus({ state: 'ready', model: 5 }));
  });
});

describe('saves made before the client forwards them', () => {
  it('keeps each file once, latest save last, and forgets them when taken', () => {
    const pending = new PendingSaves();
    pending.add('file:///a.py', 'A1');
    pending.add('file:///b.py', 'B');
    pending.add('file:///a.py', 'A2');
    assert.equal(pending.size, 2);
    assert.deepEqual(pending.take(), ['B', 'A2']);
    assert.deepEqual(pending.take(), []);
  });
});

describe('saves made before the extension was activated', () => {
  it('are the clean open files changed on disk since the extension host started', () => {
    const mtimes = { '/w/old.py': 1000, '/w/saved.py': 5000, '/w/dirty.py': 6000 };
    const docs = [
      { key: 'old', uri: 'old', isDirty: false, path: '/w/old.py' },
      { key: 'saved', uri: 'saved', isDirty: false, path: '/w/saved.py' },
      { key: 'dirty', uri: 'dirty', isDirty: true, path: '/w/dirty.py' },
      { key: 'gone', uri: 'gone', isDirty: false, path: '/w/gone.py' },
    ];
    const found = savedBeforeActivation(docs, (p) => mtimes[p], 4000);
    assert.deepEqual(found.map((d) => d.key), ['saved']);
  });
});

describe('a closable output channel', () => {
  it('drops writes after close() instead of throwing "Channel has been closed"', () => {
    const lines = [];
    let disposed = 0;
    const real = {
      name: 'x',
      logLevel: 3,
      appendLine(text) {
        if (disposed) throw new Error('Channel has been closed');
        lines.push(text);
      },
      info(text) { this.appendLine(`[info] ${text}`); },
      dispose() { disposed += 1; },
    };
    const { channel, close } = closable(real);
    channel.info('before');
    channel.dispose(); // a client disposing what it was given does not close it
    channel.appendLine('still open');
    close();
    close();
    channel.info('after');
    channel.appendLine('after');
    assert.deepEqual(lines, ['[info] before', 'still open']);
    assert.equal(disposed, 1);
    assert.equal(channel.logLevel, 3);
  });
});

describe('the trace channel', () => {
  function emitter() {
    const listeners = [];
    return {
      event: (f) => { listeners.push(f); return { dispose() {} }; },
      fire: (v) => listeners.forEach((f) => f(v)),
      dispose() {},
    };
  }

  it('is at Trace level whenever phiLsp.trace.server is on, so the client traces, and writes plainly', () => {
    let setting = 'messages';
    const lines = [];
    const out = { name: 'phi-lsp (trace)', appendLine: (l) => lines.push(l), append() {}, replace() {}, clear() {}, show() {}, hide() {}, dispose() {} };
    const levels = [];
    const trace = new TraceChannel(out, () => setting, emitter(), () => new Date('2026-01-01T10:00:00.250Z'));
    trace.onDidChangeLogLevel((level) => levels.push(level));
    assert.equal(trace.logLevel, LOG_LEVEL.Trace);
    trace.trace("Sending request 'initialize - (0)'.");
    assert.deepEqual(lines, ["[10:00:00.250] Sending request 'initialize - (0)'."]);
    setting = 'off';
    trace.settingChanged();
    assert.equal(trace.logLevel, LOG_LEVEL.Off);
    trace.trace('not shown');
    trace.settingChanged(); // unchanged: no event
    setting = 'verbose';
    trace.settingChanged();
    assert.deepEqual(levels, [LOG_LEVEL.Off, LOG_LEVEL.Trace]);
    assert.equal(lines.length, 1);
  });
});
