"""What may leave the machine: files that hold secrets are never sent to the backend, and
secret-looking strings are redacted from every prompt.

Excluded always: .env files, keys and certificates, SSH identities, credential stores; plus
whatever the `.gitignore`-style `privacy.exclude` setting lists. Redaction replaces the secret
part of private-key blocks, cloud access keys, well-known token formats and assignments such
as `password = "..."` with a placeholder, keeping the code around it intact.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pathspec

from phi_lsp.core import secrets
from phi_lsp.core.documents import Snapshot
from phi_lsp.core.settings import PrivacySettings, Settings
from phi_lsp.core.syntax import path_of

log = logging.getLogger(__name__)

# Basenames (fnmatch, case-insensitive) of files that hold secrets.
SECRET_FILES = (
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.crt",
    "*.cer",
    "*.der",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.kdbx",
    "*.gpg",
    "*.asc",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    "*.ppk",
    "credentials",
    "credentials.*",
    "*credentials*.json",
    "*.tfvars",
    "terraform.tfstate*",
    "secrets.*",
    "*.secret",
    "*.secrets",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".pypirc",
    ".npmrc",
    ".git-credentials",
    "htpasswd",
    ".htpasswd",
    "service-account*.json",
)

REDACTED = "<redacted>"
# What a masked document holds where its secrets were (same byte length, line ends kept, so
# offsets and the tree stay valid); `clean` turns each run of it into REDACTED.
FILLER = 0
_TO_FILLER = bytes(b if b in b"\r\n" else FILLER for b in range(256))
_FILLED = re.compile("\x00+(?:[\r\n]+\x00+)*")
# Above this many `*` wildcards (a `**` counts once) a pattern's regex can take seconds or
# forever to fail on a deep path; such a pattern excludes everything (fail closed), and says so.
MAX_WILDCARDS = 4
CHUNK_BYTES = 4096  # documents are scanned in chunks that end at a blank line (see mask_source)
_CHUNK_CACHE_SIZE = 4096


@dataclass
class Redaction:
    text: str
    count: int = 0
    kinds: list[str] = field(default_factory=list)


def redact(text: str) -> Redaction:
    """Replace secret-looking substrings of `text` with a placeholder."""
    data = text.encode("utf-8", "surrogatepass")
    spans = secrets.find_secrets(data)
    if not spans:
        return Redaction(text)
    out = bytearray()
    position = 0
    for span in spans:
        out += data[position : span.start] + REDACTED.encode()
        position = span.end
    out += data[position:]
    return Redaction(out.decode("utf-8", "surrogatepass"), len(spans), [s.kind for s in spans])


_chunk_cache: OrderedDict[bytes, tuple[secrets.Span, ...]] = OrderedDict()


def _chunk_spans(chunk: bytes) -> tuple[secrets.Span, ...]:
    found = _chunk_cache.get(chunk)
    if found is None:
        found = tuple(secrets.find_line_secrets(chunk))
        _chunk_cache[chunk] = found
        if len(_chunk_cache) > _CHUNK_CACHE_SIZE:
            _chunk_cache.popitem(last=False)
    else:
        _chunk_cache.move_to_end(chunk)
    return found


def document_secrets(source: bytes) -> list[secrets.Span]:
    """The secrets of a whole document, as byte spans.

    Private-key blocks are found over the whole text (one fast search), so a block whose header
    lies far above a prompt window is still known. The other rules run per chunk: a chunk ends at
    the first blank line after CHUNK_BYTES, so the chunks after an edit are the same bytes as
    before it and come from the cache; a keystroke rescans one chunk."""
    spans = list(secrets.key_blocks(source))
    start = 0
    while start < len(source):
        end = source.find(b"\n\n", start + CHUNK_BYTES)
        end = len(source) if end < 0 else end + 1
        if end - start > 8 * CHUNK_BYTES:  # no blank line for long: cut at a line end
            cut = source.find(b"\n", start + 8 * CHUNK_BYTES)
            end = end if cut < 0 else cut + 1
        spans.extend(secrets.Span(start + s.start, start + s.end, s.kind) for s in _chunk_spans(source[start:end]))
        start = end
    return secrets.merge(spans)


def mask_source(source: bytes) -> bytes:
    """`source` with every secret's bytes (but its line ends) replaced by FILLER."""
    spans = document_secrets(source)
    if not spans:
        return source
    masked = bytearray(source)
    for span in spans:
        masked[span.start : span.end] = source[span.start : span.end].translate(_TO_FILLER)
    return bytes(masked)


def _simplified(pattern: str) -> str:
    """`**/**/x` and friends as `**/x` (what they mean)."""
    previous = None
    while previous != pattern:
        previous, pattern = pattern, pattern.replace("**/**/", "**/").replace("/**/**", "/**")
    return pattern


class PrivacyFilter:
    def __init__(self, settings: PrivacySettings | None = None, roots: list[Path] | None = None):
        self._masked: dict[str, tuple[bytes, bytes]] = {}
        self.configure(settings or PrivacySettings(), roots or [])

    def configure(self, settings: PrivacySettings, roots: list[Path]) -> None:
        self.redact_secrets = settings.redact_secrets
        self.roots = [Path(r) for r in roots]
        self._real_roots = [Path(os.path.realpath(r)) for r in self.roots]
        self.problems: list[str] = []
        self._exclude_all = False
        lines = []
        for raw in settings.exclude:
            pattern = _simplified(raw.strip())
            if not pattern or pattern.startswith("#"):
                continue
            if len(re.findall(r"\*+", pattern)) > MAX_WILDCARDS:
                self._exclude_all = True
                self.problems.append(
                    f"privacy.exclude: {raw!r} has more than {MAX_WILDCARDS} wildcards, too many to match safely; "
                    "until it is simplified, no file is sent to the model")
                continue
            try:
                pathspec.GitIgnoreSpec.from_lines([pattern])
            except (ValueError, re.error):  # [z-a]: a range that is no range matches nothing, as in git
                continue
            lines.append(pattern)
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        for problem in self.problems:
            log.warning("%s", problem)

    def is_secret_file(self, uri_or_path: str) -> bool:
        """True when the file's name, or the name of the file it links to, is a secret's."""
        return any(_secret_name(PurePosixPath(p).name) for p in self._paths(uri_or_path))

    def is_excluded(self, uri_or_path: str) -> bool:
        """True when the file must never be sent to the backend: a secret file (by its name or
        its link target's), one `privacy.exclude` names (by its path or its target's)."""
        paths = self._paths(uri_or_path)
        if any(_secret_name(PurePosixPath(p).name) for p in paths):
            return True
        if self._exclude_all:
            return True
        if self._spec is None:
            return False
        return any(self._spec.match_file(self._relative(PurePosixPath(p))) for p in paths)

    def inside_roots(self, path: Path) -> bool:
        """True when `path`, links resolved, lies inside one of the workspace roots."""
        return is_inside(path, self._real_roots)

    def _paths(self, uri_or_path: str) -> list[str]:
        """The path itself and, for a link (or a path through a linked folder), its target."""
        path = path_of(uri_or_path)
        if urlparse(uri_or_path).scheme not in ("", "file") or not os.path.isabs(path):
            return [path]  # untitled:, vscode-notebook-cell: and the like: no file behind it
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return [path]
        return [path] if real == path else [path, real]

    def _relative(self, path: PurePosixPath) -> str:
        for root in [*self.roots, *self._real_roots]:
            try:
                return str(path.relative_to(PurePosixPath(root.as_posix())))
            except ValueError:
                continue
        return str(path).lstrip("/")

    def clean(self, text: str) -> str:
        """The text as it may be sent: masked secrets marked, others redacted (unless turned off)."""
        if "\x00" in text:
            text = _FILLED.sub(REDACTED, text)
        return redact(text).text if self.redact_secrets else text

    def sendable(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot that prompts may be cut from: its secrets masked over the whole document
        (before any window is cut), offsets and tree unchanged. Cached per document version."""
        masked = self.masked_source(snapshot.uri, snapshot.source)
        return snapshot if masked is snapshot.source else replace(snapshot, source=masked)

    def masked_source(self, uri: str, source: bytes) -> bytes:
        """`source` (of the document `uri`) with its secrets masked; cached per version."""
        if not self.redact_secrets:
            return source
        cached = self._masked.get(uri)
        if cached is not None and cached[0] is source:
            return cached[1]
        masked = mask_source(source)
        self._masked[uri] = (source, masked)
        if len(self._masked) > 64:
            self._masked.pop(next(iter(self._masked)))
        return masked


def _secret_name(name: str) -> bool:
    name = name.lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_FILES)


def is_inside(path: Path, real_roots: list[Path]) -> bool:
    """True when `path` with its links resolved is one of `real_roots` or below one."""
    real = Path(os.path.realpath(path))
    return any(real == root or root in real.parents for root in real_roots)


# -- logs ------------------------------------------------------------------------------------

_known_secrets: set[str] = set()


def remember_secret(value: str | None) -> None:
    """A secret value in use (an API key): never written to a log, whatever its shape."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def remember_configured_secrets(settings: Settings) -> None:
    """Every API key and URL credential the settings hold, from whatever source they came."""
    backend = settings.backend
    remember_secret(os.environ.get("PHI_LSP_API_KEY"))
    for key in (backend.api_key, *(e.api_key for e in backend.endpoints)):
        remember_secret(key)
    for url in (backend.url, *(e.url for e in backend.endpoints)):
        user_info = urlparse(url or "").netloc.rpartition("@")[0]
        for part in (user_info, *user_info.split(":")):
            if len(part) >= 8 or ":" in part:  # a password or a key; not a short user name
                remember_secret(part)


def mask_known(text: str) -> str:
    """`text` with every configured secret (and URL credentials) replaced: for what phi-lsp
    prints or says, where secret-looking code must stay as it is."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text and "://" in text:
        text = _URL_CREDENTIALS.sub(REDACTED, text)
    return text


def mask(text: str) -> str:
    """`text` with known secret values and secret-looking strings replaced."""
    return redact(mask_known(text)).text


# user:password@ and a DSN's key@ in a URL.
_URL_CREDENTIALS = re.compile(r"(?<=://)(?:[^/\s:@'\"`]+:[^/\s@'\"`]+|[A-Za-z0-9_\-]{16,})(?=@)")


class MaskedStream:
    """A text stream that writes through `mask_known` (the CLI's stdout and stderr)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(mask_known(text))

    def __getattr__(self, name):
        return getattr(self._stream, name)


class LogRedactor(logging.Filter):
    """A handler filter that keeps secrets out of log output. Libraries log what they see (at
    -vv pygls logs the InitializeParams with their initializationOptions, and every message
    body), so every record is masked, its traceback included, just before it is written."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the handler report it as usual
            return True
        cleaned = mask(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True
