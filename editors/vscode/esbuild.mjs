// Bundles the extension and vscode-languageclient into one file, out/extension.js (`vscode` is
// provided by VS Code). `npm run compile` runs tsc first (type check; out/*.js for the unit
// tests), then this, which replaces tsc's out/extension.js with the bundle.
import * as esbuild from 'esbuild';

await esbuild.build({
  entryPoints: ['src/extension.ts'],
  outfile: 'out/extension.js',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['vscode'],
  minify: process.argv.includes('--minify'),
  sourcemap: true,
  logLevel: 'warning',
});
