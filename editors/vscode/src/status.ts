/**
 * The status bar item's words for each `phi/status` state (CONTRACT.md), plus the extension's
 * own states for when no server is running. No `vscode` import: unit-tested in plain Node.
 */

export interface PhiStatus {
  state: string;
  message?: string;
  model?: string;
  url?: string;
}

export interface Presentation {
  text: string;
  tooltip: string;
  /** A `statusBarItem.*Background` theme colour id, or undefined for the normal colour. */
  background?: 'statusBarItem.warningBackground' | 'statusBarItem.errorBackground';
}

const LOOK: Record<string, { icon: string; label: string; background?: Presentation['background'] }> = {
  starting: { icon: '$(sync~spin)', label: 'starting' },
  ready: { icon: '$(sparkle)', label: 'ready' },
  busy: { icon: '$(loading~spin)', label: 'busy' },
  unreachable: { icon: '$(debug-disconnect)', label: 'unreachable', background: 'statusBarItem.warningBackground' },
  error: { icon: '$(error)', label: 'error', background: 'statusBarItem.errorBackground' },
  disabled: { icon: '$(circle-slash)', label: 'disabled' },
  // The extension's own states (no phi/status from a server).
  'server-starting': { icon: '$(sync~spin)', label: 'starting server' },
  'server-stopped': { icon: '$(debug-stop)', label: 'server stopped', background: 'statusBarItem.warningBackground' },
  'server-missing': { icon: '$(error)', label: 'phi-lsp not found', background: 'statusBarItem.errorBackground' },
};

export function present(status: PhiStatus): Presentation {
  const look = LOOK[status.state] ?? { icon: '$(question)', label: String(status.state) };
  const lines = [`phi-lsp: ${look.label}`];
  if (status.message) {
    lines.push(status.message);
  }
  if (status.model) {
    lines.push(`Model: ${status.model}`);
  }
  // The server's "ready" message is often "Using <url>": the URL is said once.
  if (status.url && !(status.message ?? '').includes(status.url)) {
    lines.push(`Backend: ${status.url}`);
  }
  lines.push('', 'Click for the phi-lsp output.');
  return { text: `${look.icon} Phi: ${look.label}`, tooltip: lines.join('\n'), background: look.background };
}

/** Whether a notification's params have the shape CONTRACT.md gives `phi/status`. */
export function isPhiStatus(params: unknown): params is PhiStatus {
  if (typeof params !== 'object' || params === null) {
    return false;
  }
  const p = params as Record<string, unknown>;
  return typeof p.state === 'string' && ['message', 'model', 'url'].every((k) => p[k] === undefined || typeof p[k] === 'string');
}
