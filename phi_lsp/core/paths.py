"""Where phi-lsp keeps things: files shipped inside the package, and the user's state directory."""

from __future__ import annotations

from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_MODELS = PACKAGE_DIR / "models"
EXAMPLES = PACKAGE_DIR / "examples"
APP_NAME = "phi-lsp"


def state_dir() -> Path:
    """The user's state directory for phi-lsp ($XDG_STATE_HOME/phi-lsp on Linux)."""
    return Path(platformdirs.user_state_dir(APP_NAME, appauthor=False))


def bundled_model(name: str) -> Path | None:
    """The folder of a model shipped with phi-lsp (the demo model), if it is there."""
    path = BUNDLED_MODELS / name
    return path if (path / "config.json").is_file() else None
