/**
 * "phi-lsp: Show Statistics" shows `phi.stats` in one read-only virtual document,
 * `phi-lsp-stats:/statistics.json`, refreshed in place each time the command runs (an unsaved
 * Untitled document per run piled up, came back on reload and asked to be saved on close).
 */

import * as vscode from 'vscode';

export class StatsView implements vscode.TextDocumentContentProvider, vscode.Disposable {
  static readonly scheme = 'phi-lsp-stats';
  static readonly uri = vscode.Uri.from({ scheme: StatsView.scheme, path: '/statistics.json' });

  private text = '{}\n';
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;

  update(stats: unknown): void {
    this.text = JSON.stringify(stats, null, 2) + '\n';
    this.changed.fire(StatsView.uri);
  }

  provideTextDocumentContent(): string {
    return this.text;
  }

  dispose(): void {
    this.changed.dispose();
  }
}
