/**
 * Two start-up and shut-down rules, without a `vscode` import so that they are unit-tested in
 * plain Node.
 *
 * PendingSaves: vscode-languageclient forwards `didSave` only once the client runs, so a file
 * saved while the server is still starting (or restarting) was never reviewed. The extension
 * listens to saves from activation on, keeps those made while the client is not running, and
 * sends them once it is.
 *
 * closable: VS Code disposes an extension's subscriptions right after calling `deactivate()`,
 * without waiting for it, so the client's stop handlers wrote to an already closed output
 * channel ("Channel has been closed"). A channel wrapped here drops writes after `close()`.
 */

export class PendingSaves {
  private readonly uris = new Map<string, unknown>();

  /** Remember a save (keyed by the URI's string form, the latest wins). */
  add(key: string, uri: unknown): void {
    this.uris.delete(key);
    this.uris.set(key, uri);
  }

  /** The saves kept so far, oldest first; forgets them. */
  take(): unknown[] {
    const all = [...this.uris.values()];
    this.uris.clear();
    return all;
  }

  get size(): number {
    return this.uris.size;
  }
}

/**
 * A save made before the extension was even activated (VS Code activates it when the first
 * matching file opens, and the extension host may still be loading then) reaches no listener.
 * Files open at activation, unmodified in the editor, whose file changed on disk since this
 * window's extension host started were saved (or changed) during start-up: they count as saved.
 */
export function savedBeforeActivation(
  documents: { key: string; uri: unknown; isDirty: boolean; path?: string }[],
  modifiedAt: (path: string) => number | undefined,
  hostStartedAt: number,
): { key: string; uri: unknown }[] {
  return documents.filter((d) => {
    if (d.isDirty || d.path === undefined) {
      return false;
    }
    const mtime = modifiedAt(d.path);
    return mtime !== undefined && mtime >= hostStartedAt;
  });
}

/** Methods of an (Log)OutputChannel that write or show; dropped once the channel is closed. */
const WRITES = new Set(['append', 'appendLine', 'replace', 'clear', 'show', 'hide', 'trace', 'debug', 'info', 'warn', 'error']);

export interface Closable<T> {
  channel: T;
  /** Dispose the real channel; later writes through `channel` are dropped. */
  close(): void;
}

export function closable<T extends { dispose(): void }>(real: T): Closable<T> {
  let closed = false;
  const channel = new Proxy(real, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver);
      if (typeof value !== 'function') {
        return value;
      }
      if (property === 'dispose') {
        return () => undefined; // only close() disposes: the client disposes what it was given
      }
      if (closed && typeof property === 'string' && WRITES.has(property)) {
        return () => undefined;
      }
      return value.bind(target);
    },
  });
  return {
    channel,
    close() {
      if (!closed) {
        closed = true;
        real.dispose();
      }
    },
  };
}
