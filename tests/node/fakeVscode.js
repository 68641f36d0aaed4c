// A stand-in for the `vscode` module, enough to run the real extension (editors/vscode/out) and
// the real vscode-languageclient inside plain Node: settings, documents and their events, the
// providers and diagnostic collections the client registers, commands, the status bar item and
// the output channel. It records what the extension shows so tests can look at it.
//
// Anything not modelled here answers as a permissive stand-in (callable, any property), which
// is what parts of the client that these tests do not exercise get.
'use strict';

const Module = require('node:module');
const { fileURLToPath, pathToFileURL } = require('node:url');

function standIn(name) {
  const target = function () {
    return standIn(`${name}()`);
  };
  return new Proxy(target, {
    get(obj, prop) {
      if (prop === 'then') return undefined; // not a promise
      if (prop === Symbol.toPrimitive) return () => name;
      if (prop === Symbol.iterator) return function* () {};
      if (prop === 'prototype') return obj.prototype;
      if (!(prop in obj)) obj[prop] = standIn(`${name}.${String(prop)}`);
      return obj[prop];
    },
    construct() {
      return standIn(`new ${name}`);
    },
  });
}

/** A namespace object: its own members, a stand-in for anything else. */
function namespace(name, members) {
  return new Proxy(members, {
    get(obj, prop) {
      if (prop in obj) return obj[prop];
      if (typeof prop === 'symbol') return undefined;
      obj[prop] = standIn(`vscode.${name}.${prop}`);
      return obj[prop];
    },
  });
}

class Disposable {
  constructor(onDispose) {
    this._onDispose = onDispose;
  }
  static from(...items) {
    return new Disposable(() => items.forEach((item) => item?.dispose?.()));
  }
  dispose() {
    const f = this._onDispose;
    this._onDispose = undefined;
    f?.();
  }
}

class EventEmitter {
  constructor() {
    this.listeners = new Set();
    this.event = (listener, thisArg, disposables) => {
      const entry = (e) => listener.call(thisArg, e);
      this.listeners.add(entry);
      const d = new Disposable(() => this.listeners.delete(entry));
      if (Array.isArray(disposables)) disposables.push(d);
      return d;
    };
  }
  fire(event) {
    for (const listener of [...this.listeners]) listener(event);
  }
  dispose() {
    this.listeners.clear();
  }
}

class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }
  isEqual(other) {
    return other.line === this.line && other.character === this.character;
  }
}

class Range {
  constructor(a, b, c, d) {
    if (typeof a === 'number') {
      this.start = new Position(a, b);
      this.end = new Position(c, d);
    } else {
      this.start = a;
      this.end = b;
    }
  }
  get isEmpty() {
    return this.start.isEqual(this.end);
  }
}

class Uri {
  constructor(url) {
    this._url = url;
    this.scheme = url.protocol.replace(/:$/, '');
    this.path = decodeURIComponent(url.pathname);
    this.authority = url.host;
    this.query = url.search.replace(/^\?/, '');
    this.fragment = url.hash.replace(/^#/, '');
  }
  static parse(value) {
    return new Uri(new URL(value));
  }
  static file(path) {
    return new Uri(pathToFileURL(path));
  }
  static from({ scheme, path = '/' }) {
    return new Uri(new URL(`${scheme}:${path}`));
  }
  get fsPath() {
    return this.scheme === 'file' ? fileURLToPath(this._url) : this.path;
  }
  toString() {
    return this._url.href;
  }
  toJSON() {
    return this.toString();
  }
  with() {
    return this;
  }
}

class Diagnostic {
  constructor(range, message, severity = 0) {
    this.range = range;
    this.message = message;
    this.severity = severity;
  }
}

class CodeActionKind {
  constructor(value) {
    this.value = value;
  }
  append(part) {
    return new CodeActionKind(this.value ? `${this.value}.${part}` : part);
  }
  contains(other) {
    return this.value === other.value || other.value.startsWith(`${this.value}.`);
  }
  intersects(other) {
    return this.contains(other) || other.contains(this);
  }
}
for (const [name, value] of Object.entries({
  Empty: '', QuickFix: 'quickfix', Refactor: 'refactor', RefactorExtract: 'refactor.extract', RefactorInline: 'refactor.inline',
  RefactorMove: 'refactor.move', RefactorRewrite: 'refactor.rewrite', Source: 'source', SourceOrganizeImports: 'source.organizeImports',
  SourceFixAll: 'source.fixAll', Notebook: 'notebook',
})) {
  CodeActionKind[name] = new CodeActionKind(value);
}

class CodeAction {
  constructor(title, kind) {
    this.title = title;
    this.kind = kind;
  }
}

class WorkspaceEdit {
  constructor() {
    this.edits = [];
  }
  replace(uri, range, newText) {
    this.edits.push({ uri, range, newText });
  }
  set(uri, edits) {
    for (const e of edits) this.edits.push({ uri, ...e });
  }
}

class TextEdit {
  constructor(range, newText) {
    this.range = range;
    this.newText = newText;
  }
  static replace(range, newText) {
    return new TextEdit(range, newText);
  }
}

class InlineCompletionItem {
  constructor(insertText, range, command) {
    this.insertText = insertText;
    this.range = range;
    this.command = command;
  }
}

class InlineCompletionList {
  constructor(items) {
    this.items = items;
  }
}

class MarkdownString {
  constructor(value = '') {
    this.value = value;
  }
  appendMarkdown(text) {
    this.value += text;
    return this;
  }
  appendCodeblock(code) {
    this.value += `\n\`\`\`\n${code}\n\`\`\`\n`;
    return this;
  }
}

class ThemeColor {
  constructor(id) {
    this.id = id;
  }
}

class CancellationTokenSource {
  constructor() {
    const emitter = new EventEmitter();
    this._emitter = emitter;
    this.token = { isCancellationRequested: false, onCancellationRequested: emitter.event };
  }
  cancel() {
    if (!this.token.isCancellationRequested) {
      this.token.isCancellationRequested = true;
      this._emitter.fire(undefined);
    }
  }
  dispose() {}
}

/** A TextDocument over a string; `setText` replaces the whole text (one change event). */
class TextDocument {
  constructor(uri, languageId, text) {
    this.uri = uri;
    this.fileName = uri.fsPath;
    this.languageId = languageId;
    this.version = 1;
    this.isDirty = false;
    this.isClosed = false;
    this.isUntitled = false;
    this.eol = 1;
    this._text = text;
  }
  getText() {
    return this._text;
  }
  get lineCount() {
    return this._text.split('\n').length;
  }
  lineAt(line) {
    const text = this._text.split('\n')[line];
    return { text, range: new Range(line, 0, line, text.length) };
  }
  offsetAt(position) {
    const lines = this._text.split('\n');
    let offset = 0;
    for (let i = 0; i < position.line; i++) offset += lines[i].length + 1;
    return offset + position.character;
  }
  positionAt(offset) {
    const before = this._text.slice(0, offset).split('\n');
    return new Position(before.length - 1, before[before.length - 1].length);
  }
  save() {
    return Promise.resolve(true);
  }
}

function matchScore(selector, document) {
  const selectors = Array.isArray(selector) ? selector : [selector];
  let best = 0;
  for (const s of selectors) {
    if (typeof s === 'string') {
      if (s === document.languageId || s === '*') best = Math.max(best, 10);
      continue;
    }
    if (s.language && s.language !== '*' && s.language !== document.languageId) continue;
    if (s.scheme && s.scheme !== '*' && s.scheme !== document.uri.scheme) continue;
    if (s.notebookType) continue;
    best = Math.max(best, s.language ? 10 : 5);
  }
  return best;
}

/** Builds a fresh `vscode` stand-in; `state` holds what the extension did. */
function createVscode({ settings = {}, defaults = {}, workspaceFolder, version = '1.95.0' }) {
  const state = {
    settings: new Map(Object.entries(settings)), // "phiLsp.backend.url" -> value (user settings)
    commands: new Map(),
    statusItems: [],
    outputLines: [],
    messages: [], // { kind, text }
    statusBarMessages: [],
    diagnostics: new Map(), // collection name -> Map(uri string -> Diagnostic[])
    diagnosticSets: new EventEmitter(), // fires { name, uri, diagnostics }
    providers: { inlineCompletion: [], completion: [], codeAction: [] },
    contextKeys: new Map(),
    documents: [],
    contentProviders: new Map(), // scheme -> TextDocumentContentProvider
    virtualDocuments: new Map(), // uri string -> TextDocument (one per uri, as VS Code keeps them)
    closedChannelWrites: [], // writes to a disposed output channel (VS Code throws "Channel has been closed")
  };
  const events = {
    open: new EventEmitter(), close: new EventEmitter(), change: new EventEmitter(), save: new EventEmitter(),
    willSave: new EventEmitter(), configuration: new EventEmitter(), folders: new EventEmitter(),
    visibleEditors: new EventEmitter(), activeEditor: new EventEmitter(),
  };
  const editors = [];

  const folder = workspaceFolder ? { uri: Uri.file(workspaceFolder), name: 'ws', index: 0 } : undefined;

  function getConfiguration(section) {
    const full = (key) => (section ? `${section}.${key}` : key);
    return {
      get(key, fallback) {
        const name = full(key);
        if (state.settings.has(name)) return state.settings.get(name);
        if (name in defaults) return defaults[name];
        return fallback;
      },
      has(key) {
        return state.settings.has(full(key)) || full(key) in defaults;
      },
      inspect(key) {
        const name = full(key);
        return { key: name, defaultValue: defaults[name], globalValue: state.settings.get(name) };
      },
      update(key, value) {
        state.settings.set(full(key), value);
        return Promise.resolve();
      },
    };
  }

  function outputChannel(name) {
    let disposed = false;
    const write = (text) => {
      if (disposed) {
        state.closedChannelWrites.push(`${name}: ${text}`);
        throw new Error('Channel has been closed');
      }
      state.outputLines.push(text);
    };
    const line = (level) => (message) => write(`[${level}] ${message}`);
    return {
      name,
      logLevel: 3, // Info, as VS Code starts a log channel
      onDidChangeLogLevel: new EventEmitter().event,
      trace: line('trace'), debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error'),
      append: write,
      appendLine: write,
      replace() {}, clear() {}, show() {}, hide() {},
      dispose() { disposed = true; },
    };
  }

  async function openTextDocument(arg) {
    if (arg instanceof Uri && state.contentProviders.has(arg.scheme)) {
      const key = arg.toString();
      const text = await state.contentProviders.get(arg.scheme).provideTextDocumentContent(arg);
      let document = state.virtualDocuments.get(key);
      if (document === undefined) {
        document = new TextDocument(arg, 'json', text);
        state.virtualDocuments.set(key, document);
      }
      document._text = text;
      return document;
    }
    return new TextDocument(Uri.parse('untitled:Untitled-1'), arg?.language ?? 'plaintext', arg?.content ?? '');
  }

  function message(kind) {
    return (text) => {
      state.messages.push({ kind, text });
      return Promise.resolve(undefined);
    };
  }

  function diagnosticCollection(name) {
    const entries = new Map();
    state.diagnostics.set(name, entries);
    const set = (uri, diagnostics) => {
      if (Array.isArray(uri)) {
        for (const [u, d] of uri) set(u, d);
        return;
      }
      entries.set(uri.toString(), diagnostics ?? []);
      state.diagnosticSets.fire({ name, uri: uri.toString(), diagnostics: diagnostics ?? [] });
    };
    return {
      name,
      set,
      delete: (uri) => set(uri, []),
      clear: () => entries.clear(),
      get: (uri) => entries.get(uri.toString()),
      has: (uri) => entries.has(uri.toString()),
      forEach: (f) => entries.forEach((d, u) => f(Uri.parse(u), d)),
      dispose: () => state.diagnostics.delete(name),
    };
  }

  function register(list) {
    return (selector, provider, metadata) => {
      const entry = { selector, provider, metadata };
      state.providers[list].push(entry);
      return new Disposable(() => state.providers[list].splice(state.providers[list].indexOf(entry), 1));
    };
  }

  const vscode = {
    version,
    Disposable, EventEmitter, Position, Range, Uri, Diagnostic, CodeAction, CodeActionKind, WorkspaceEdit, TextEdit,
    InlineCompletionItem, InlineCompletionList, MarkdownString, ThemeColor, CancellationTokenSource,
    Selection: Range,
    DiagnosticSeverity: { Error: 0, Warning: 1, Information: 2, Hint: 3 },
    DiagnosticTag: { Unnecessary: 1, Deprecated: 2 },
    StatusBarAlignment: { Left: 1, Right: 2 },
    ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
    InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
    CodeActionTriggerKind: { Invoke: 1, Automatic: 2 },
    ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
    TextDocumentSaveReason: { Manual: 1, AfterDelay: 2, FocusOut: 3 },
    EndOfLine: { LF: 1, CRLF: 2 },
    ExtensionMode: { Production: 1, Development: 2, Test: 3 },
    LogLevel: { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 },
    env: namespace('env', { appName: 'Visual Studio Code', language: 'en', machineId: 'test', sessionId: 'test', uiKind: 1 }),
    workspace: namespace('workspace', {
      get workspaceFolders() {
        return folder ? [folder] : undefined;
      },
      getWorkspaceFolder: () => folder,
      get textDocuments() {
        return state.documents;
      },
      notebookDocuments: [],
      getConfiguration,
      asRelativePath: (uri) => (folder && uri.fsPath.startsWith(folder.uri.fsPath) ? uri.fsPath.slice(folder.uri.fsPath.length + 1) : uri.fsPath),
      onDidOpenTextDocument: events.open.event,
      onDidCloseTextDocument: events.close.event,
      onDidChangeTextDocument: events.change.event,
      onDidSaveTextDocument: events.save.event,
      onWillSaveTextDocument: events.willSave.event,
      onDidChangeConfiguration: events.configuration.event,
      onDidChangeWorkspaceFolders: events.folders.event,
      openTextDocument,
      registerTextDocumentContentProvider(scheme, provider) {
        state.contentProviders.set(scheme, provider);
        provider.onDidChange?.((uri) => {
          const document = state.virtualDocuments.get(uri.toString());
          if (document) Promise.resolve(provider.provideTextDocumentContent(uri)).then((text) => { document._text = text; });
        });
        return new Disposable(() => state.contentProviders.delete(scheme));
      },
    }),
    window: namespace('window', {
      get activeTextEditor() {
        return editors[editors.length - 1];
      },
      get visibleTextEditors() {
        return [...editors];
      },
      onDidChangeActiveTextEditor: events.activeEditor.event,
      onDidChangeVisibleTextEditors: events.visibleEditors.event,
      tabGroups: { all: [], onDidChangeTabs: new EventEmitter().event, onDidChangeTabGroups: new EventEmitter().event },
      createOutputChannel: outputChannel,
      createStatusBarItem(id, alignment, priority) {
        const item = { id, alignment, priority, text: '', tooltip: undefined, backgroundColor: undefined, shown: false, show() { this.shown = true; }, hide() { this.shown = false; }, dispose() {} };
        state.statusItems.push(item);
        return item;
      },
      showErrorMessage: message('error'),
      showWarningMessage: message('warning'),
      showInformationMessage: message('info'),
      setStatusBarMessage: (text) => {
        state.statusBarMessages.push(text);
        return new Disposable();
      },
      withProgress: (options, task) => task({ report() {} }, new CancellationTokenSource().token),
      showTextDocument: async (document) => {
        state.shownDocuments = [...(state.shownDocuments ?? []), document];
        return undefined;
      },
    }),
    languages: namespace('languages', {
      match: matchScore,
      createDiagnosticCollection: diagnosticCollection,
      getDiagnostics: (uri) => {
        const all = [];
        for (const entries of state.diagnostics.values()) all.push(...(entries.get(uri.toString()) ?? []));
        return all;
      },
      registerInlineCompletionItemProvider: register('inlineCompletion'),
      registerCompletionItemProvider: register('completion'),
      registerCodeActionsProvider: register('codeAction'),
    }),
    commands: namespace('commands', {
      registerCommand(id, callback) {
        if (state.commands.has(id)) throw new Error(`command '${id}' already exists`);
        state.commands.set(id, callback);
        return new Disposable(() => state.commands.delete(id));
      },
      async executeCommand(id, ...args) {
        if (id === 'setContext') {
          state.contextKeys.set(args[0], args[1]);
          return undefined;
        }
        const callback = state.commands.get(id);
        if (!callback) throw new Error(`command '${id}' not found`);
        return callback(...args);
      },
      getCommands: async () => [...state.commands.keys()],
    }),
    extensions: namespace('extensions', { getExtension: () => undefined, all: [], onDidChange: new EventEmitter().event }),
  };

  const api = {
    vscode: new Proxy(vscode, {
      get(obj, prop) {
        if (prop in obj) return obj[prop];
        if (typeof prop === 'symbol') return undefined;
        obj[prop] = standIn(`vscode.${prop}`);
        return obj[prop];
      },
    }),
    state,
    /** Opens a document in an editor as VS Code does: textDocuments, onDidOpenTextDocument, then the editor. */
    openDocument(file, languageId, text) {
      const document = new TextDocument(Uri.file(file), languageId, text);
      state.documents.push(document);
      events.open.fire(document);
      editors.push({ document, selection: new Range(0, 0, 0, 0), selections: [], visibleRanges: [] });
      events.visibleEditors.fire([...editors]);
      events.activeEditor.fire(editors[editors.length - 1]);
      return document;
    },
    /** Replaces a document's whole text (one content change). */
    changeDocument(document, text) {
      const range = new Range(new Position(0, 0), document.positionAt(document.getText().length));
      const rangeLength = document.getText().length;
      document._text = text;
      document.version += 1;
      events.change.fire({ document, contentChanges: [{ range, rangeOffset: 0, rangeLength, text }], reason: undefined });
    },
    saveDocument(document) {
      events.save.fire(document);
    },
    closeDocument(document) {
      const editor = editors.findIndex((e) => e.document === document);
      if (editor >= 0) {
        editors.splice(editor, 1);
        events.visibleEditors.fire([...editors]);
        events.activeEditor.fire(editors[editors.length - 1]);
      }
      state.documents.splice(state.documents.indexOf(document), 1);
      document.isClosed = true;
      events.close.fire(document);
    },
    /** Changes user settings and fires onDidChangeConfiguration for them. */
    changeSettings(changes) {
      for (const [key, value] of Object.entries(changes)) {
        if (value === undefined) state.settings.delete(key);
        else state.settings.set(key, value);
      }
      const changed = Object.keys(changes);
      events.configuration.fire({
        affectsConfiguration: (section) => changed.some((key) => key === section || key.startsWith(`${section}.`)),
      });
    },
  };
  return api;
}

/** Makes `require('vscode')` return `vscode` until the returned function is called. */
function installVscode(vscode) {
  const load = Module._load;
  Module._load = function (request, ...rest) {
    return request === 'vscode' ? vscode : load.call(this, request, ...rest);
  };
  return () => {
    Module._load = load;
  };
}

module.exports = { createVscode, installVscode, standIn, CancellationTokenSource, Position, Range, Uri };
