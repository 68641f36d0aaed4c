/**
 * How to start phi-lsp: the first of
 *   1. `phiLsp.server.path`                      -> <path> <args>
 *   2. `phiLsp.server.pythonPath`                -> <python> -P -m phi_lsp <args>
 *   3. `phi-lsp` on PATH                         -> phi-lsp <args>
 *   4. the Python extension's selected interpreter, if phi_lsp imports there
 *   5. `python3` (`python` on Windows), if phi_lsp imports there
 *
 * `-P` (Python 3.11+, which phi-lsp needs) keeps the working directory, the workspace, off
 * `sys.path`, so a workspace file named like a module phi-lsp imports cannot shadow it.
 *
 * No `vscode` import here: the Python extension is reached through `Probe.pythonExtension`, so
 * the order can be unit-tested in plain Node.
 */

import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface ServerSettings {
  path?: string | null;
  pythonPath?: string | null;
  args?: string[];
  /** For `${workspaceFolder}` in the settings above. */
  workspaceFolder?: string;
  /** For a leading `~`. */
  home?: string;
}

export interface ServerCommand {
  command: string;
  args: string[];
  /** Where the command came from, in words, for the output channel. */
  origin: string;
}

export interface Probe {
  /** An executable's full path on PATH, or undefined. */
  which(name: string): string | undefined;
  /** The Python extension's interpreter for the workspace, or undefined. */
  pythonExtension(): Promise<string | undefined>;
  /** Whether `python -c "import phi_lsp"` succeeds. */
  importsPhiLsp(python: string): Promise<boolean>;
  platform: string;
}

export class ServerNotFound extends Error {
  constructor(public readonly tried: string[]) {
    super(
      'phi-lsp was not found. Install it into a Python environment (`pip install -e .` in a ' +
        'checkout of phi-lsp), then set `phiLsp.server.path` to its `phi-lsp` executable or ' +
        '`phiLsp.server.pythonPath` to its Python. Tried: ' +
        tried.join('; '),
    );
  }
}

/** `~/x` -> home/x, `${workspaceFolder}` -> the first workspace folder, `${env:NAME}`. */
export function expand(value: string, settings: ServerSettings, env: NodeJS.ProcessEnv = process.env): string {
  let result = value.trim();
  if (settings.home && (result === '~' || result.startsWith('~/') || result.startsWith('~\\'))) {
    result = settings.home + result.slice(1);
  }
  result = result.replace(/\$\{env:([^}]+)\}/g, (_, name: string) => env[name] ?? '');
  if (settings.workspaceFolder !== undefined) {
    result = result.replace(/\$\{workspaceFolder\}/g, settings.workspaceFolder);
  }
  return result;
}

export async function resolveServerCommand(settings: ServerSettings, probe: Probe): Promise<ServerCommand> {
  const extra = (settings.args ?? []).filter((arg) => typeof arg === 'string').map((arg) => expand(arg, settings));
  const module = (python: string, origin: string): ServerCommand => ({
    command: python,
    args: ['-P', '-m', 'phi_lsp', ...extra],
    origin,
  });
  if (settings.path && settings.path.trim()) {
    return { command: expand(settings.path, settings), args: extra, origin: 'setting phiLsp.server.path' };
  }
  if (settings.pythonPath && settings.pythonPath.trim()) {
    return module(expand(settings.pythonPath, settings), 'setting phiLsp.server.pythonPath');
  }
  const tried: string[] = ['phi-lsp on PATH'];
  const onPath = probe.which('phi-lsp');
  if (onPath) {
    return { command: onPath, args: extra, origin: 'phi-lsp on PATH' };
  }
  const selected = await probe.pythonExtension().catch(() => undefined);
  if (selected) {
    if (await probe.importsPhiLsp(selected)) {
      return module(selected, "the Python extension's selected interpreter");
    }
    tried.push(`${selected} (the Python extension's interpreter) has no phi_lsp`);
  } else {
    tried.push('no interpreter from the Python extension');
  }
  const fallback = probe.platform === 'win32' ? 'python' : 'python3';
  if (await probe.importsPhiLsp(fallback)) {
    return module(fallback, `${fallback} on PATH`);
  }
  tried.push(`${fallback} has no phi_lsp`);
  throw new ServerNotFound(tried);
}

/** An executable on PATH (PATHEXT on Windows), like `which`. */
export function which(name: string, env: NodeJS.ProcessEnv = process.env, platform: string = process.platform): string | undefined {
  const dirs = (env.PATH ?? env.Path ?? '').split(path.delimiter).filter(Boolean);
  const exts = platform === 'win32' ? (env.PATHEXT ?? '.EXE;.CMD;.BAT').split(';') : [''];
  for (const dir of dirs) {
    for (const ext of exts) {
      const candidate = path.join(dir, name + ext);
      try {
        const stat = fs.statSync(candidate);
        if (stat.isFile()) {
          if (platform !== 'win32') {
            fs.accessSync(candidate, fs.constants.X_OK);
          }
          return candidate;
        }
      } catch {
        // not here
      }
    }
  }
  return undefined;
}

/** Whether phi_lsp imports in that interpreter (bounded: 15 s); `-P` fails below Python 3.11. */
export function importsPhiLsp(python: string): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(python, ['-P', '-c', 'import phi_lsp'], { timeout: 15_000, windowsHide: true }, (error) => resolve(!error));
  });
}

export function describe(command: ServerCommand): string {
  return [command.command, ...command.args].map((part) => (/\s/.test(part) ? JSON.stringify(part) : part)).join(' ');
}
