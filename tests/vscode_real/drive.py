"""Drives a real VS Code workbench (code-server) in headless Chromium with Playwright, as a user
would, and writes what it saw to $VSC_OUT/result.json (read by tests/test_vscode_real.py).

Run by tests/test_vscode_real.py with the Playwright venv's Python; each phase records its
result and the next phase still runs after a failure. Phases (argv, in this order):

  earlysave  open buggy.py in the fresh window and save at once, before the extension is ready;
             wait for phi-review rows in the Problems panel; hover the finding, open its quick
             fix (Ctrl+.), apply it, save
  complete   open stack.py, type the last '.', wait for ghost text, Tab, save
  stats      "phi-lsp: Show Statistics" twice: one read-only tab, no Untitled ones
  edit       change phiLsp.backend.url in the settings.json editor; Show Statistics again
             shows the URL the running server now uses
  reload     "Developer: Reload Window": the extension is deactivated (and started again)
  measure    open stack.py and wait for "Phi: ready" only (for the activation timing)

Env: VSC_PORT, VSC_WS (workspace folder), VSC_OUT (screenshots, result.json), VSC_SHOTS (where
the README's screenshots go, optional), REVIEW_WAIT (s), EDIT_OLD / EDIT_NEW (the URLs).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

from playwright.sync_api import sync_playwright

PORT = os.environ.get("VSC_PORT", "8080")
WS = Path(os.environ["VSC_WS"])
OUT = Path(os.environ["VSC_OUT"])
SHOTS = Path(os.environ["VSC_SHOTS"]) if os.environ.get("VSC_SHOTS") else None
URL = f"http://127.0.0.1:{PORT}/?folder={WS}"
REVIEW_WAIT = float(os.environ.get("REVIEW_WAIT", "120"))
EDITOR = ".editor-instance .monaco-editor"
result: dict = {"phases": {}}


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def shot(page, name, clip_to=None):
    """A full-window screenshot for the record; with clip_to, a small one for the README."""
    page.screenshot(path=str(OUT / f"{name}.png"))
    if SHOTS is not None and clip_to is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{clip_to[0]}.png"), clip=clip_to[1])


def status_text(page):
    return [t.strip() for t in page.locator(".statusbar-item").all_inner_texts() if "Phi" in t]


def run_command(page, label):
    page.keyboard.press("F1")
    page.wait_for_selector(".quick-input-widget input", state="visible", timeout=10000)
    page.keyboard.type(label, delay=10)
    time.sleep(1.0)
    page.keyboard.press("Enter")
    time.sleep(0.5)


def open_file(page, name):
    page.locator(f".explorer-folders-view .monaco-list-row:has-text('{name}')").first.dblclick()
    page.wait_for_selector(f".tabs-container .tab:has-text('{name}')", timeout=20000)
    page.locator(f"{EDITOR} .view-lines").first.click()


def wait_ready(page, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any("ready" in x for x in status_text(page)):
            return round(time.time() - t0, 1)
        time.sleep(0.5)
    raise TimeoutError(f"no 'Phi: ready' after {timeout} s; status bar: {status_text(page)}")


def problems(page):
    return page.locator(".markers-panel .monaco-list-row").all_inner_texts()


def wait_for_findings(page, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = problems(page)
        if any("phi-review" in r for r in rows):
            time.sleep(2)  # the rest of the file's findings come in the same publish
            return problems(page)
        time.sleep(1)
    return problems(page)


def editor_box(page, height=360):
    box = page.locator(f"{EDITOR}").first.bounding_box()
    return {"x": box["x"], "y": box["y"], "width": min(box["width"], 760), "height": min(box["height"], height)}


def go_to_line(page, line, column=1):
    page.keyboard.press("Control+g")
    page.wait_for_selector(".quick-input-widget input", state="visible", timeout=10000)
    page.keyboard.type(f"{line}:{column}")
    page.keyboard.press("Enter")
    time.sleep(0.5)


# -- phases ----------------------------------------------------------------------------------


def earlysave(page, r):
    open_file(page, "buggy.py")
    page.keyboard.press("Control+End")
    page.keyboard.type("\n# saved at once\n")
    page.keyboard.press("Control+s")
    r["status_at_save"] = status_text(page)
    t0 = time.time()
    log("saved while the status bar says", r["status_at_save"])
    page.keyboard.press("Control+Shift+M")  # the Problems panel
    r["rows"] = wait_for_findings(page, REVIEW_WAIT)
    r["review_after_s"] = round(time.time() - t0, 1)
    log("problems:", r["rows"])
    # The finding on `return total / len(values)`: hover it, then its quick fix.
    text = (WS / "buggy.py").read_text()
    line = text.splitlines().index("    return total / len(values)") + 1
    page.locator(f"{EDITOR} .view-lines").first.click()
    go_to_line(page, line, 20)
    page.keyboard.press("Control+k")
    page.keyboard.press("Control+i")  # show the hover
    page.wait_for_selector(".monaco-hover:has-text('phi-review')", state="visible", timeout=15000)
    time.sleep(0.5)
    r["hover"] = page.locator(".monaco-hover").first.inner_text()
    box = editor_box(page)
    shot(page, "review-finding", ("vscode-review-finding", box))
    page.keyboard.press("Escape")
    page.keyboard.press("Control+.")
    menu = page.wait_for_selector(".action-widget", state="visible", timeout=15000)
    time.sleep(0.5)
    r["quick_fixes"] = menu.inner_text()
    shot(page, "quick-fix", ("vscode-quick-fix", box))
    page.keyboard.press("Enter")  # the first (preferred) action
    time.sleep(1.0)
    page.keyboard.press("Control+s")
    time.sleep(1.5)
    r["fixed_line"] = (WS / "buggy.py").read_text().splitlines()[line - 1]


def complete(page, r):
    open_file(page, "stack.py")
    r["ready_after_open_s"] = wait_ready(page)
    page.keyboard.press("Control+End")
    page.keyboard.press("Backspace")
    time.sleep(0.3)
    t0 = time.time()
    page.keyboard.type(".")
    ghost = None
    while time.time() - t0 < 40:
        g = page.locator(".ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text")
        if g.count() > 0:
            ghost = " | ".join(g.all_inner_texts())
            break
        if not r.get("needed_manual_trigger") and time.time() - t0 > 15:
            # Typing asks on its own; on a loaded machine the answer may miss VS Code's window.
            r["needed_manual_trigger"] = True
            run_command(page, "Trigger Inline Suggestion")
        time.sleep(0.2)
    r["ghost"] = ghost
    r["ghost_after_s"] = round(time.time() - t0, 2) if ghost else None
    log("ghost text:", repr(ghost), r["ghost_after_s"])
    time.sleep(0.5)
    shot(page, "ghost-text", ("vscode-ghost-text", editor_box(page, 140)))
    page.keyboard.press("Tab")
    time.sleep(0.7)
    page.keyboard.press("Control+s")
    time.sleep(1.5)
    r["stack_py"] = (WS / "stack.py").read_text()
    r["status_tooltip"] = page.locator(".statusbar-item:has-text('Phi')").first.get_attribute("aria-label")


def stats_text(page):
    return page.locator(f"{EDITOR} .view-lines").first.inner_text().replace("\u00a0", " ")


def stats(page, r):
    for _ in range(2):
        run_command(page, "phi-lsp: Show Statistics")
        page.wait_for_selector(".tabs-container .tab:has-text('statistics.json')", timeout=20000)
        time.sleep(1.5)
    tabs = [t.replace("\n", "") for t in page.locator(".tabs-container .tab").all_inner_texts()]
    r["tabs"] = tabs
    r["untitled_tabs"] = [t for t in tabs if "Untitled" in t]
    r["stats_tabs"] = [t for t in tabs if "statistics.json" in t]
    text = stats_text(page)
    r["stats_head"] = text[:400]
    # Read-only: typing into it changes nothing.
    page.locator(f"{EDITOR} .view-lines").first.click()
    page.keyboard.type("x")
    time.sleep(0.5)
    r["read_only"] = stats_text(page) == text
    shot(page, "stats")


def edit(page, r):
    old, new = os.environ["EDIT_OLD"], os.environ["EDIT_NEW"]
    run_command(page, "Preferences: Open User Settings (JSON)")
    page.wait_for_selector(".view-line:has-text('phiLsp.backend.url')", timeout=20000)
    time.sleep(1)
    page.keyboard.press("Control+h")
    time.sleep(0.5)
    page.keyboard.type(old)
    page.keyboard.press("Tab")
    page.keyboard.type(new)
    time.sleep(0.5)
    page.keyboard.press("Control+Alt+Enter")  # replace all
    time.sleep(0.5)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    time.sleep(1)
    page.keyboard.press("Escape")
    time.sleep(4)
    run_command(page, "phi-lsp: Show Statistics")
    time.sleep(3)
    m = re.search(r'"url": "([^"]+)"', stats_text(page))
    r["server_url_after_edit"] = m and m.group(1)
    log("server url after the edit:", r["server_url_after_edit"])
    shot(page, "settings-edited")


def reload(page, r):
    run_command(page, "Developer: Reload Window")
    time.sleep(3)
    page.wait_for_selector(".monaco-workbench", timeout=120000)
    page.wait_for_selector(".explorer-folders-view", timeout=120000)
    time.sleep(5)
    r["reloaded"] = True


def measure(page, r):
    open_file(page, "stack.py")
    r["ready_after_open_s"] = wait_ready(page)


PHASES = {"earlysave": earlysave, "complete": complete, "stats": stats, "edit": edit, "reload": reload, "measure": measure}


def main(names):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        t0 = time.time()
        page.goto(URL, wait_until="domcontentloaded")
        page.wait_for_selector(".monaco-workbench", timeout=120000)
        page.wait_for_selector(".explorer-folders-view", timeout=120000)
        result["workbench_s"] = round(time.time() - t0, 1)
        time.sleep(2)
        for name in names:
            r: dict = {"ok": False}
            result["phases"][name] = r
            t1 = time.time()
            try:
                PHASES[name](page, r)
                r["ok"] = True
            except Exception:
                r["error"] = traceback.format_exc()
                log(name, "failed:", r["error"])
                try:
                    page.keyboard.press("Escape")
                    shot(page, f"failed-{name}")
                except Exception:
                    pass
            r["s"] = round(time.time() - t1, 1)
            log(name, "done in", r["s"], "s")
        result["status_bar_end"] = status_text(page)
        result["console_errors"] = [c for c in console if c.startswith("error")][:30]
        browser.close()
    (OUT / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
