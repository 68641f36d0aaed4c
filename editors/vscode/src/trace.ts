/**
 * The LSP trace (`phiLsp.trace.server`) in a plain output channel, "phi-lsp (trace)".
 *
 * vscode-languageclient 10 traces only while its trace channel's log level is Trace; given a
 * log output channel, whose level starts at Info, `"phiLsp.trace.server": "messages"` showed
 * nothing until the user found "Set Log Level". This adapter gives the client the
 * LogOutputChannel shape it expects, with the level taken from the setting: any value but "off"
 * is Trace, and changing the setting fires onDidChangeLogLevel so the client switches at once.
 * The lines go to a plain OutputChannel, which shows everything written to it.
 *
 * No `vscode` import (unit-tested in plain Node): the channel, the setting and the event
 * emitter are passed in.
 */

export interface PlainChannel {
  readonly name: string;
  append(value: string): void;
  appendLine(value: string): void;
  replace(value: string): void;
  clear(): void;
  show(preserveFocus?: boolean): void;
  hide(): void;
  dispose(): void;
}

export interface Emitter<T> {
  event: (listener: (value: T) => unknown) => { dispose(): void };
  fire(value: T): void;
  dispose(): void;
}

/** vscode.LogLevel's values (Off = 0, Trace = 1, Info = 3). */
export const LOG_LEVEL = { Off: 0, Trace: 1, Info: 3 } as const;

export function traceLevel(setting: unknown): number {
  return setting === 'messages' || setting === 'verbose' || setting === 'compact' ? LOG_LEVEL.Trace : LOG_LEVEL.Off;
}

export class TraceChannel {
  private level: number;

  constructor(
    private readonly out: PlainChannel,
    private readonly setting: () => unknown,
    private readonly changed: Emitter<number>,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.level = traceLevel(setting());
  }

  get name(): string {
    return this.out.name;
  }

  get logLevel(): number {
    return this.level;
  }

  get onDidChangeLogLevel() {
    return this.changed.event;
  }

  /** Call when `phiLsp.trace.server` may have changed. */
  settingChanged(): void {
    const level = traceLevel(this.setting());
    if (level !== this.level) {
      this.level = level;
      this.changed.fire(level);
    }
  }

  trace(message: string): void {
    if (this.level !== LOG_LEVEL.Off) {
      this.out.appendLine(`${this.stamp()} ${message}`);
    }
  }

  // The client writes only trace() here; the other levels go to the main channel. Kept for the shape.
  debug(message: string): void { this.trace(message); }
  info(message: string): void { this.out.appendLine(`${this.stamp()} ${message}`); }
  warn(message: string): void { this.info(message); }
  error(message: string | Error): void { this.info(String(message)); }

  append(value: string): void { this.out.append(value); }
  appendLine(value: string): void { this.out.appendLine(value); }
  replace(value: string): void { this.out.replace(value); }
  clear(): void { this.out.clear(); }
  show(preserveFocus?: boolean): void { this.out.show(preserveFocus); }
  hide(): void { this.out.hide(); }

  dispose(): void {
    this.changed.dispose();
    this.out.dispose();
  }

  private stamp(): string {
    return `[${this.now().toISOString().slice(11, 23)}]`;
  }
}
