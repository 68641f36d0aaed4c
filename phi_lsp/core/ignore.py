"""The workspace's `.gitignore` files, as git reads them (pathspec's GitIgnoreSpec): a file that
git ignores (build output, vendored copies, generated code) is not the project's code and stays
out of the index.

Each `.gitignore` applies to the folder it is in and below; a deeper one can re-include what a
shallower one excluded (`!pattern`), so the deepest matching rule wins, as in git.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from pathspec import GitIgnoreSpec


class GitIgnore:
    def __init__(self, roots: Iterable[Path]):
        self.roots = [os.path.abspath(r) for r in roots]
        self._specs: dict[str, tuple[float, GitIgnoreSpec | None]] = {}

    def _spec(self, folder: str) -> GitIgnoreSpec | None:
        path = os.path.join(folder, ".gitignore")
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            self._specs[folder] = (-1.0, None)
            return None
        cached = self._specs.get(folder)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                spec = GitIgnoreSpec.from_lines(handle.read().splitlines())
        except OSError:
            spec = None
        self._specs[folder] = (mtime, spec)
        return spec

    def forget(self, gitignore_path: str) -> None:
        """A `.gitignore` changed on disk."""
        self._specs.pop(os.path.dirname(os.path.abspath(gitignore_path)), None)

    def _root_of(self, path: str) -> str | None:
        best = None
        for root in self.roots:
            if (path == root or path.startswith(root.rstrip(os.sep) + os.sep)) and (best is None or len(root) > len(best)):
                best = root
        return best

    def ignored(self, path: str, is_dir: bool = False, parents_checked: bool = False) -> bool:
        """Whether git would ignore `path` (a file, or a folder with `is_dir`). A walk that
        already left out ignored folders passes `parents_checked` to skip asking about them."""
        path = os.path.abspath(path)
        root = self._root_of(path)
        if root is None or path == root:
            return False
        # Folders from the root down to the path's parent; a folder that is ignored hides all below.
        relative = os.path.relpath(path, root).split(os.sep)
        if not parents_checked:
            for depth in range(1, len(relative)):
                if self._matches(root, relative[:depth], True):
                    return True
        return self._matches(root, relative, is_dir)

    def _matches(self, root: str, parts: list[str], is_dir: bool) -> bool:
        """The verdict of the deepest .gitignore (between root and the path) that has one."""
        verdict = False
        folder = root
        for depth in range(len(parts)):
            spec = self._spec(folder)
            if spec is not None:
                relative = "/".join(parts[depth:]) + ("/" if is_dir else "")
                result = spec.check_file(relative)
                if result.include is not None:
                    verdict = bool(result.include)
            folder = os.path.join(folder, parts[depth])
        return verdict
