/**
 * Which `phiLsp.*` settings go to the server, and in what shape.
 *
 * No `vscode` import here, so the rules can be unit-tested in plain Node.
 *
 * Only values the user has set (in any settings scope) are sent. Sending VS Code's defaults
 * would override the workspace's `[tool.phi-lsp]` in pyproject.toml (which ranks below
 * initializationOptions on the server) and would make the server think a model was chosen
 * when it was not, so its demo-model fallback would never apply.
 */

/** Settings that only say how to start the server; they are never sent to it. */
export const EXTENSION_ONLY_PREFIXES = ['server.', 'trace.'];

export function isServerKey(key: string): boolean {
  return !EXTENSION_ONLY_PREFIXES.some((prefix) => key.startsWith(prefix));
}

/** The server's keys ("backend.url", ...) from the extension's contributed configuration. */
export function serverKeysFromManifest(packageJson: any): Map<string, unknown> {
  const keys = new Map<string, unknown>();
  const sections = packageJson?.contributes?.configuration ?? [];
  for (const section of Array.isArray(sections) ? sections : [sections]) {
    for (const [name, schema] of Object.entries<any>(section.properties ?? {})) {
      if (!name.startsWith('phiLsp.')) {
        continue;
      }
      const key = name.slice('phiLsp.'.length);
      if (isServerKey(key)) {
        keys.set(key, schema.default ?? null);
      }
    }
  }
  return keys;
}

/** What `WorkspaceConfiguration.inspect(key)` returns (the parts used here). */
export interface Inspected {
  globalValue?: unknown;
  workspaceValue?: unknown;
  workspaceFolderValue?: unknown;
  globalLanguageValue?: unknown;
  workspaceLanguageValue?: unknown;
  workspaceFolderLanguageValue?: unknown;
}

/** The value the user set for a key, most specific scope first; undefined when none is set. */
export function explicitValue(inspected: Inspected | undefined): unknown {
  if (!inspected) {
    return undefined;
  }
  const scopes = [
    inspected.workspaceFolderLanguageValue,
    inspected.workspaceLanguageValue,
    inspected.globalLanguageValue,
    inspected.workspaceFolderValue,
    inspected.workspaceValue,
    inspected.globalValue,
  ];
  return scopes.find((value) => value !== undefined);
}

/** {"backend.url": x} -> {backend: {url: x}} */
export function nest(flat: Map<string, unknown>): Record<string, any> {
  const result: Record<string, any> = {};
  for (const [key, value] of flat) {
    const parts = key.split('.');
    let target = result;
    for (const part of parts.slice(0, -1)) {
      target = target[part] ??= {};
    }
    target[parts[parts.length - 1]] = value;
  }
  return result;
}

/**
 * Builds the settings payloads: the first one for initializationOptions, later ones for
 * workspace/didChangeConfiguration (and for the server's workspace/configuration pulls).
 *
 * The server keeps the initializationOptions layer for the whole session and replaces the
 * didChangeConfiguration layer on every change, and a null there means "not set". A key the
 * user set at start-up and has since removed would therefore stay in effect: only a restart
 * (new initializationOptions) lets it fall back to pyproject.toml or the default, so
 * `removedSinceStart()` tells the extension when to restart instead of pushing.
 */
export class SettingsTracker {
  private sentAtStart = new Set<string>();

  constructor(
    private readonly keys: Map<string, unknown>,
    private readonly inspect: (key: string) => Inspected | undefined,
  ) {}

  initializationOptions(): Record<string, any> {
    const values = this.explicit();
    this.sentAtStart = new Set(values.keys());
    return nest(values);
  }

  current(): Record<string, any> {
    return nest(this.explicit());
  }

  removedSinceStart(): string[] {
    const values = this.explicit();
    return [...this.sentAtStart].filter((key) => !values.has(key));
  }

  private explicit(): Map<string, unknown> {
    const values = new Map<string, unknown>();
    for (const key of this.keys.keys()) {
      const value = explicitValue(this.inspect(key));
      if (value !== undefined) {
        values.set(key, value);
      }
    }
    return values;
  }
}
