// How long the VS Code extension takes from loading its main module to asking for the server
// process (the "Starting ..." line), on the stand-in VS Code API of tests/node/fakeVscode.js, in
// a fresh Node process per sample. Compares an unpacked extension folder's packaging as shipped:
//
//   node benchmarks/vscode_activation.js editors/vscode [samples]
//
// Prints each sample and the median in ms. The server command is one that does not exist, so no
// server starts; what is measured is module loading and activation.
'use strict';

const { execFileSync } = require('node:child_process');
const path = require('node:path');

const folder = path.resolve(process.argv[2] || 'editors/vscode');
const samples = Number(process.argv[3] || 7);

if (process.env.PHI_BENCH_CHILD) {
  const { createVscode, installVscode } = require(path.resolve(__dirname, '..', 'tests', 'node', 'fakeVscode.js'));
  const manifest = require(path.join(folder, 'package.json'));
  const fake = createVscode({ settings: { 'phiLsp.server.path': '/nonexistent/phi-lsp' } });
  installVscode(fake.vscode);
  const t0 = process.hrtime.bigint();
  const extension = require(path.join(folder, manifest.main));
  const loaded = process.hrtime.bigint();
  const context = { subscriptions: [], extension: { packageJSON: manifest, id: 'phi-lsp.phi-lsp' }, extensionPath: folder };
  extension.activate(context).catch(() => undefined);
  const started = setInterval(() => {
    if (fake.state.outputLines.some((line) => /Starting /.test(line))) {
      clearInterval(started);
      const done = process.hrtime.bigint();
      console.log(JSON.stringify({ loadMs: Number(loaded - t0) / 1e6, toStartMs: Number(done - t0) / 1e6 }));
      process.exit(0);
    }
  }, 1);
} else {
  const runs = [];
  for (let i = 0; i < samples; i++) {
    const out = execFileSync(process.execPath, [__filename, folder], { env: { ...process.env, PHI_BENCH_CHILD: '1' } });
    runs.push(JSON.parse(out.toString()));
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`${folder}: ${samples} samples`);
  console.log(`  load main module: median ${median(runs.map((r) => r.loadMs)).toFixed(1)} ms`);
  console.log(`  load + activate until "Starting": median ${median(runs.map((r) => r.toStartMs)).toFixed(1)} ms`);
}
