// The client capabilities VS Code's language client really sends, computed by the very
// vscode-languageclient the extension ships (editors/vscode/node_modules), so the server is
// tested against what VS Code will offer it (utf-16 only, dynamic registration, code action
// resolve support, inline completion, ...).
//
// vscode-languageclient needs the `vscode` module only to exist while its features fill in
// their capabilities; a permissive stand-in is enough for that, and nothing else is run.
'use strict';

const path = require('node:path');

const { installVscode, standIn } = require('./fakeVscode');

const EXTENSION = path.resolve(__dirname, '..', '..', 'editors', 'vscode');
const VSCODE_VERSION = '1.95.0';

function vscodeClientCapabilities() {
  let entry;
  try {
    entry = require.resolve('vscode-languageclient/node', { paths: [EXTENSION] });
  } catch (error) {
    throw new Error(`vscode-languageclient is not installed in ${EXTENSION}: run \`npm ci\` there first (${error.message})`);
  }
  const vscode = standIn('vscode');
  vscode.version = VSCODE_VERSION;
  const uninstall = installVscode(vscode);
  try {
    const { LanguageClient } = require(entry);
    const client = new LanguageClient('phiLsp', 'phi-lsp', { command: 'phi-lsp' }, { documentSelector: [{ language: 'python' }] });
    const capabilities = JSON.parse(JSON.stringify(client.computeClientCapabilities()));
    const version = require(path.join(EXTENSION, 'node_modules', 'vscode-languageclient', 'package.json')).version;
    return { capabilities, clientInfo: { name: 'Visual Studio Code', version: VSCODE_VERSION }, languageClientVersion: version };
  } finally {
    uninstall();
  }
}

module.exports = { vscodeClientCapabilities };
