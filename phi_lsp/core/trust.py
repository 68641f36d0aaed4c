"""Which workspace folders the user trusts (`phi-lsp trust PATH`).

A repository's own files may tune phi-lsp, but settings that run a program or decide where code
is sent (`backend.*`, `managed.*`) are taken from a workspace only when the user trusts it: a
cloned repository must not be able to start `./evil.sh` or send every keystroke to its author's
server. Trust is kept per folder (and covers the folders below it) in the user's state
directory, readable by the user only. Editors that have trust of their own (VS Code's workspace
trust) pass it in `initializationOptions.workspaceTrusted`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from phi_lsp.core.paths import state_dir

log = logging.getLogger(__name__)

TRUST_FILE = "trusted-workspaces.json"


def trust_file() -> Path:
    return state_dir() / TRUST_FILE


def trusted_folders(path: Path | None = None) -> list[Path]:
    path = path or trust_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Path(p) for p in data.get("folders", []) if isinstance(p, str)]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("could not read the trusted folders (%s): %s; trusting none", path, exc)
        return []


def is_trusted(folder: Path, path: Path | None = None) -> bool:
    """Whether `folder` is, or lies inside, a folder the user trusts (links resolved)."""
    folder = _canonical(folder)
    return any(folder == trusted or trusted in folder.parents for trusted in trusted_folders(path))


def set_trusted(folder: Path, trusted: bool = True, path: Path | None = None) -> Path:
    """Add (or remove) a folder; returns the canonical folder."""
    path = path or trust_file()
    folder = _canonical(folder)
    folders = [f for f in trusted_folders(path) if f != folder]
    if trusted:
        folders.append(folder)
    _write_private(path, json.dumps({"folders": sorted(str(f) for f in folders)}, indent=2) + "\n")
    return folder


def _canonical(folder: Path) -> Path:
    return Path(os.path.realpath(folder))


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".trust-")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
