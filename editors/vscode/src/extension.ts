/**
 * The phi-lsp VS Code extension: starts the phi-lsp language server and wires it to VS Code.
 *
 * vscode-languageclient does the LSP work: inline completions (ghost text, LSP 3.18
 * textDocument/inlineCompletion, built into vscode-languageclient 10), review diagnostics
 * pushed with source "phi-review", quick fixes (textDocument/codeAction), $/progress, and the
 * server's own commands (phi.acceptCompletion runs when a suggestion is accepted). This file
 * adds starting the server, settings, the status bar item and the palette commands.
 */

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as vscode from 'vscode';
import {
  DidSaveTextDocumentNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  DidChangeConfigurationNotification,
  RevealOutputChannelOn,
  ServerOptions,
  State,
} from 'vscode-languageclient/node';

import { ServerCommand, ServerNotFound, describe, importsPhiLsp, resolveServerCommand, which } from './serverCommand';
import { SettingsTracker, serverKeysFromManifest } from './settings';
import { PhiStatus, isPhiStatus, present } from './status';
import { PendingSaves, closable, savedBeforeActivation } from './startup';
import { StatsView } from './statsView';
import { TraceChannel } from './trace';

const CLIENT_ID = 'phiLsp';
const SECTION = 'phiLsp';
const STATUS_NOTIFICATION = 'phi/status';
const REVIEW_SOURCE = 'phi-review';
const BUSY_DELAY_MS = 400;
/** The languages phi-lsp has tree-sitter grammars for (phi_lsp/core/syntax.py). */
const LANGUAGES = [
  'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust', 'java',
  'c', 'cpp', 'ruby', 'kotlin', 'lua', 'php', 'shellscript', 'scala', 'swift',
];

let controller: Controller | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  controller = new Controller(context);
  context.subscriptions.push(
    controller,
    vscode.commands.registerCommand('phiLsp.reviewFile', (uri?: vscode.Uri) => controller!.reviewFile(uri)),
    vscode.commands.registerCommand('phiLsp.reviewWorkspace', () => controller!.reviewWorkspace()),
    vscode.commands.registerCommand('phiLsp.restartServer', () => controller!.restart()),
    vscode.commands.registerCommand('phiLsp.showOutput', () => controller!.output.show(true)),
    vscode.commands.registerCommand('phiLsp.showStats', () => controller!.showStats()),
    vscode.workspace.onDidChangeConfiguration((event) => controller!.configurationChanged(event)),
  );
  await controller.start();
}

export async function deactivate(): Promise<void> {
  // VS Code disposes context.subscriptions right after calling this, without waiting: the
  // output channels are closed here, once the server has stopped (see closable()).
  const stopping = controller;
  controller = undefined;
  await stopping?.stop();
  stopping?.closeChannels();
}

class Controller implements vscode.Disposable {
  readonly output: vscode.LogOutputChannel;
  private readonly closeOutput: () => void;
  private readonly trace: TraceChannel;
  private readonly closeTrace: () => void;
  private readonly stats: StatsView;
  private readonly statusItem: vscode.StatusBarItem;
  /** Saves made while no client forwards them (starting, restarting): sent once one does. */
  private readonly pendingSaves = new PendingSaves();
  private forwardingSaves = false;
  private readonly listeners: vscode.Disposable[] = [];
  private readonly tracker: SettingsTracker;
  private client: LanguageClient | undefined;
  private command: ServerCommand | undefined;
  private lifecycle: Promise<void> = Promise.resolve();
  private pythonWatch: vscode.Disposable | undefined;
  private busyTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(private readonly context: vscode.ExtensionContext) {
    // Listen to saves first thing, before anything that takes time.
    this.listeners.push(vscode.workspace.onDidSaveTextDocument((document) => this.saved(document)));
    this.noteSavesBeforeActivation();
    const output = closable(vscode.window.createOutputChannel('phi-lsp', { log: true }));
    this.output = output.channel;
    this.closeOutput = output.close;
    const traceEmitter = new vscode.EventEmitter<vscode.LogLevel>();
    const trace = closable(
      new TraceChannel(
        vscode.window.createOutputChannel('phi-lsp (trace)'),
        () => vscode.workspace.getConfiguration(SECTION).get('trace.server'),
        traceEmitter,
      ),
    );
    this.trace = trace.channel;
    this.closeTrace = trace.close;
    this.stats = new StatsView();
    this.listeners.push(vscode.workspace.registerTextDocumentContentProvider(StatsView.scheme, this.stats));
    this.statusItem = vscode.window.createStatusBarItem('phiLsp.status', vscode.StatusBarAlignment.Right, 100);
    this.statusItem.name = 'phi-lsp';
    this.statusItem.command = 'phiLsp.showOutput';
    this.statusItem.show();
    const keys = serverKeysFromManifest(context.extension.packageJSON);
    this.tracker = new SettingsTracker(keys, (key) => vscode.workspace.getConfiguration(SECTION).inspect(key));
  }

  /** Called by VS Code right after deactivate() (not awaited): the channels stay open for the stop. */
  dispose(): void {
    clearTimeout(this.busyTimer);
    this.pythonWatch?.dispose();
    this.statusItem.dispose();
    this.stats.dispose();
    this.listeners.forEach((listener) => listener.dispose());
  }

  closeChannels(): void {
    this.closeTrace();
    this.closeOutput();
  }

  // -- saves before the client forwards them ----------------------------------------------

  private saved(document: vscode.TextDocument): void {
    if (this.forwardingSaves || document.uri.scheme !== 'file' || !LANGUAGES.includes(document.languageId)) {
      return;
    }
    this.pendingSaves.add(document.uri.toString(), document.uri);
  }

  private noteSavesBeforeActivation(): void {
    const hostStartedAt = Date.now() - process.uptime() * 1000;
    const documents = vscode.workspace.textDocuments
      .filter((d) => d.uri.scheme === 'file' && LANGUAGES.includes(d.languageId))
      .map((d) => ({ key: d.uri.toString(), uri: d.uri, isDirty: d.isDirty, path: d.uri.fsPath }));
    const modifiedAt = (path: string) => {
      try {
        return fs.statSync(path).mtimeMs;
      } catch {
        return undefined;
      }
    };
    for (const { key, uri } of savedBeforeActivation(documents, modifiedAt, hostStartedAt)) {
      this.pendingSaves.add(key, uri);
    }
  }

  /** The client forwards saves from now on; send those it missed, for files still open. */
  private sendPendingSaves(client: LanguageClient): void {
    this.forwardingSaves = true;
    const open = new Set(vscode.workspace.textDocuments.map((document) => document.uri.toString()));
    for (const uri of this.pendingSaves.take() as vscode.Uri[]) {
      if (!open.has(uri.toString())) {
        continue;
      }
      this.output.info(`Sending the save of ${vscode.workspace.asRelativePath(uri)} made while the server was starting`);
      void client
        .sendNotification(DidSaveTextDocumentNotification.type, { textDocument: { uri: client.code2ProtocolConverter.asUri(uri) } })
        .catch((error) => this.output.warn(`Could not send a save: ${error}`));
    }
  }

  // -- lifecycle ----------------------------------------------------------------------------

  start(): Promise<void> {
    return this.serialize(() => this.doStart());
  }

  stop(): Promise<void> {
    return this.serialize(() => this.doStop());
  }

  restart(): Promise<void> {
    return this.serialize(async () => {
      this.output.info('Restarting phi-lsp');
      await this.doStop();
      await this.doStart();
    });
  }

  /** One start/stop at a time, in the order asked. */
  private serialize(step: () => Promise<void>): Promise<void> {
    this.lifecycle = this.lifecycle.then(step, step);
    return this.lifecycle;
  }

  private async doStart(): Promise<void> {
    this.showStatus({ state: 'server-starting' });
    const server = vscode.workspace.getConfiguration(`${SECTION}.server`);
    try {
      this.command = await resolveServerCommand(
        {
          path: server.get<string | null>('path'),
          pythonPath: server.get<string | null>('pythonPath'),
          args: server.get<string[]>('args'),
          workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath,
          home: os.homedir(),
        },
        {
          which: (name) => which(name),
          pythonExtension: () => this.pythonExtensionInterpreter(),
          importsPhiLsp,
          platform: process.platform,
        },
      );
    } catch (error) {
      const text = error instanceof ServerNotFound ? error.message : `phi-lsp: ${error}`;
      this.output.error(text);
      this.showStatus({ state: 'server-missing', message: text });
      void vscode.window.showErrorMessage(text, 'Open Settings', 'Show Output').then((choice) => {
        if (choice === 'Open Settings') {
          void vscode.commands.executeCommand('workbench.action.openSettings', 'phiLsp.server');
        } else if (choice === 'Show Output') {
          this.output.show(true);
        }
      });
      return;
    }
    this.output.info(`Starting ${describe(this.command)} (from ${this.command.origin})`);

    const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
    // stdio without `transport`: TransportKind.stdio would append `--stdio` to the arguments,
    // which phi-lsp's command line does not take.
    const serverOptions: ServerOptions = {
      command: this.command.command,
      args: this.command.args,
      options: { cwd, env: process.env },
    };
    const client = new LanguageClient(CLIENT_ID, 'phi-lsp', serverOptions, this.clientOptions());
    client.onDidChangeState((event) => {
      void vscode.commands.executeCommand('setContext', 'phiLsp.running', event.newState === State.Running);
      if (event.newState === State.Stopped && this.client === client) {
        this.showStatus({ state: 'server-stopped', message: 'Run "phi-lsp: Restart Server" to start it again.' });
      }
    });
    // Registered before start() so that the status sent right after `initialized` is seen.
    client.onNotification(STATUS_NOTIFICATION, (params: unknown) => {
      if (isPhiStatus(params)) {
        this.output.debug(`phi/status ${params.state}: ${params.message ?? ''}`);
        this.showStatus(params);
      } else {
        this.output.warn(`Ignored a ${STATUS_NOTIFICATION} notification of the wrong shape: ${JSON.stringify(params)}`);
      }
    });
    this.client = client;
    try {
      await client.start();
      if (this.client === client) {
        this.sendPendingSaves(client);
      }
    } catch (error) {
      this.output.error(`phi-lsp failed to start: ${error}`);
      this.showStatus({ state: 'server-stopped', message: `phi-lsp failed to start: ${error}` });
    }
  }

  private async doStop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.forwardingSaves = false;
    if (client === undefined) {
      return;
    }
    try {
      // The server stops a managed vLLM on shutdown; give it time.
      await client.dispose(10_000);
    } catch (error) {
      this.output.warn(`phi-lsp did not stop cleanly: ${error}`);
    }
  }

  private clientOptions(): LanguageClientOptions {
    const documentSelector = LANGUAGES.flatMap((language) => [
      { scheme: 'file', language },
      { scheme: 'untitled', language },
    ]);
    return {
      documentSelector,
      outputChannel: this.output,
      // A plain channel that shows the trace whenever phiLsp.trace.server is on (trace.ts).
      traceOutputChannel: this.trace as unknown as vscode.LogOutputChannel,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      diagnosticCollectionName: REVIEW_SOURCE,
      // A function, so that a restart sends the settings as they are then. VS Code's workspace
      // trust goes with them: the server lets a trusted workspace's pyproject.toml choose the
      // backend (the extension runs in trusted workspaces only; see package.json).
      initializationOptions: () => ({
        ...this.tracker.initializationOptions(),
        workspaceTrusted: vscode.workspace.isTrusted,
      }),
      middleware: {
        // VS Code shows phi-lsp's suggestions as inline ghost text; the textDocument/completion
        // fallback (for editors without inline completion) would only repeat them in the
        // suggest widget.
        provideCompletionItem: () => undefined,
        workspace: {
          // The server pulls section "phiLsp" when a didChangeConfiguration carries no
          // settings: answer with what we would push (no extension-only keys, no defaults).
          configuration: async (params, token, next) => {
            if (params.items.every((item) => item.section === SECTION)) {
              return params.items.map(() => this.tracker.current());
            }
            return next(params, token);
          },
        },
      },
    };
  }

  // -- settings -----------------------------------------------------------------------------

  configurationChanged(event: vscode.ConfigurationChangeEvent): void {
    if (!event.affectsConfiguration(SECTION)) {
      return;
    }
    if (event.affectsConfiguration(`${SECTION}.trace`)) {
      this.trace.settingChanged();
    }
    if (event.affectsConfiguration(`${SECTION}.server`)) {
      this.output.info('phiLsp.server settings changed; restarting the server');
      void this.restart();
      return;
    }
    const removed = this.tracker.removedSinceStart();
    if (removed.length > 0) {
      // Only new initializationOptions let a removed setting fall back to pyproject.toml or
      // the server's default (see SettingsTracker).
      this.output.info(`Settings removed (${removed.join(', ')}); restarting the server`);
      void this.restart();
      return;
    }
    const client = this.client;
    if (client?.state === State.Running) {
      void client
        .sendNotification(DidChangeConfigurationNotification.type, { settings: this.tracker.current() })
        .catch((error) => this.output.warn(`Could not send the changed settings: ${error}`));
    }
  }

  /** The Python extension's interpreter for this workspace (ms-python.python, optional). */
  private async pythonExtensionInterpreter(): Promise<string | undefined> {
    const extension = vscode.extensions.getExtension<any>('ms-python.python');
    if (!extension) {
      return undefined;
    }
    const lookup = async (): Promise<string | undefined> => {
      const api = extension.isActive ? extension.exports : await extension.activate();
      await api?.ready;
      const resource = vscode.workspace.workspaceFolders?.[0]?.uri;
      const environments = api?.environments;
      if (environments?.getActiveEnvironmentPath) {
        this.watchPythonInterpreter(environments);
        const resolved = await environments.resolveEnvironment(environments.getActiveEnvironmentPath(resource));
        const executable: string | undefined = resolved?.executable?.uri?.fsPath;
        if (executable) {
          return executable;
        }
      }
      // Older versions of the Python extension.
      return api?.settings?.getExecutionDetails?.(resource)?.execCommand?.[0];
    };
    const timeout = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 15_000));
    try {
      return await Promise.race([lookup(), timeout]);
    } catch (error) {
      this.output.warn(`Could not ask the Python extension for its interpreter: ${error}`);
      return undefined;
    }
  }

  private watchPythonInterpreter(environments: any): void {
    if (this.pythonWatch || typeof environments.onDidChangeActiveEnvironmentPath !== 'function') {
      return;
    }
    this.pythonWatch = environments.onDidChangeActiveEnvironmentPath(() => {
      if (this.command?.origin === "the Python extension's selected interpreter") {
        this.output.info('The selected Python interpreter changed; restarting the server');
        void this.restart();
      }
    });
  }

  // -- commands -----------------------------------------------------------------------------

  private runningClient(): LanguageClient | undefined {
    if (this.client?.state === State.Running) {
      return this.client;
    }
    void vscode.window.showErrorMessage('phi-lsp is not running.', 'Restart Server', 'Show Output').then((choice) => {
      if (choice === 'Restart Server') {
        void this.restart();
      } else if (choice === 'Show Output') {
        this.output.show(true);
      }
    });
    return undefined;
  }

  async reviewFile(uri?: vscode.Uri): Promise<void> {
    const target = uri ?? vscode.window.activeTextEditor?.document.uri;
    if (!target) {
      void vscode.window.showInformationMessage('phi-lsp: open a file to review it.');
      return;
    }
    const client = this.runningClient();
    if (!client) {
      return;
    }
    const name = vscode.workspace.asRelativePath(target);
    const summary = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: `phi-lsp: reviewing ${name}` },
      () => this.execute(client, 'phi.review', [client.code2ProtocolConverter.asUri(target)]),
    );
    if (notReviewed(summary)) {
      void vscode.window.showInformationMessage(`phi-lsp: ${name} was not reviewed: ${summary.reason}.`);
      return;
    }
    const findings = vscode.languages.getDiagnostics(target).filter((d) => d.source === REVIEW_SOURCE).length;
    vscode.window.setStatusBarMessage(`phi-lsp: ${plural(findings, 'finding')} in ${name}`, 5_000);
  }

  async reviewWorkspace(): Promise<void> {
    const client = this.runningClient();
    if (!client) {
      return;
    }
    // The server reports progress ($/progress, cancellable) while it works.
    const summary = await this.execute(client, 'phi.reviewWorkspace', []);
    if (notReviewed(summary)) {
      void vscode.window.showInformationMessage(`phi-lsp: the workspace was not reviewed: ${summary.reason}.`);
    } else if (isRecord(summary) && typeof summary.files === 'number' && typeof summary.findings === 'number') {
      vscode.window.setStatusBarMessage(
        `phi-lsp: ${plural(summary.findings, 'finding')} in ${plural(summary.files, 'file')}`,
        5_000,
      );
    }
  }

  async showStats(): Promise<void> {
    const client = this.runningClient();
    if (!client) {
      return;
    }
    const stats = await this.execute(client, 'phi.stats', []);
    if (stats !== undefined) {
      // One read-only virtual document, refreshed in place: no Untitled documents pile up.
      this.stats.update(stats);
      const document = await vscode.workspace.openTextDocument(StatsView.uri);
      await vscode.window.showTextDocument(document, { preview: true });
    }
  }

  private async execute(client: LanguageClient, command: string, args: unknown[]): Promise<unknown> {
    try {
      return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
    } catch (error) {
      this.output.error(`${command} failed: ${error}`);
      void vscode.window.showErrorMessage(`phi-lsp: ${command} failed: ${error}`);
      return undefined;
    }
  }

  // -- status bar ---------------------------------------------------------------------------

  /**
   * The server says "busy" for every request in flight, often for a fraction of a second;
   * showing that at once would make the item flicker while typing. Busy shows after a short
   * while; every other state at once.
   */
  private showStatus(status: PhiStatus): void {
    clearTimeout(this.busyTimer);
    this.busyTimer = undefined;
    if (status.state === 'busy') {
      this.busyTimer = setTimeout(() => this.render(status), BUSY_DELAY_MS);
    } else {
      this.render(status);
    }
  }

  private render(status: PhiStatus): void {
    const look = present(status);
    this.statusItem.text = look.text;
    this.statusItem.tooltip = look.tooltip;
    this.statusItem.backgroundColor = look.background ? new vscode.ThemeColor(look.background) : undefined;
  }
}

// The answers of phi.review / phi.reviewWorkspace: { reviewed: false, reason } when nothing
// was reviewed, else a summary with counts. Read defensively: CONTRACT.md does not pin them.
function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

function notReviewed(value: unknown): value is { reviewed: false; reason: string } {
  return isRecord(value) && value.reviewed === false && typeof value.reason === 'string';
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}
