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
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from phi_lsp.core.settings import PrivacySettings
from phi_lsp.core.syntax import path_of

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

_SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "private key",
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.DOTALL,
        ),
    ),
    ("aws access key", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b")),
    ("github token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    ("slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("openai key", re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b")),
    ("google api key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("stripe key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}\b")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b")),
    ("url credentials", re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]{3,}(?=@)")),
]

_SECRET_NAME = r"""(?<![\w.-])[\w.-]*(?:passw(?:or)?d|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token
        |access[_-]?token|private[_-]?key|client[_-]?secret|token)[\w-]*"""
# password = "...", api_key: '...', "secret": "...", API_KEY: str = "...": keep the name, hide
# the value.
_ASSIGNMENT = re.compile(
    rf"""(?ix)
    (?P<name>{_SECRET_NAME}["']?)
    (?P<sep>\s*(?::\s*[a-z_][\w.\[\], |]*?\s*)?(?::=|=>|[:=])\s*)
    (?P<quote>["'`])(?P<value>[^"'`\n]{{4,}})(?P=quote)
    """
)
# Unquoted, as in shell, .ini, YAML or .properties files: `export AWS_SECRET_ACCESS_KEY=wJal...`,
# `password: hunter2-secret`. Only a value that runs to the end of its line (a comment aside)
# counts, and plain words and numbers stay: that keeps code such as `token = next_token` or
# `password = get_password()` or `max_tokens = 64` as it is.
_UNQUOTED_ASSIGNMENT = re.compile(
    rf"""(?imx)
    (?P<name>{_SECRET_NAME})
    (?P<sep>[ \t]*[:=][ \t]*)
    (?P<value>[^\s"'`,;(){{}}\[\]<>=][^\s"'`,;(){{}}\[\]<>]{{5,}})
    (?=[ \t]*(?:\#.*)?$)
    """
)
_PLAIN_WORD = re.compile(r"[A-Za-z_][A-Za-z_.]*|[0-9.]+")
# Values that are clearly not secrets (placeholders, lookups) stay, so code still reads right.
_NOT_A_SECRET = re.compile(r"^(?:\$\{?\w+\}?|<[^>]*>|\*+|x+|changeme|example|dummy|test|none|null|\{\{.*\}\})$", re.I)


@dataclass
class Redaction:
    text: str
    count: int = 0
    kinds: list[str] = field(default_factory=list)


def redact(text: str) -> Redaction:
    """Replace secret-looking substrings of `text` with a placeholder."""
    result = Redaction(text)

    def replace_whole(kind: str):
        def sub(match: re.Match[str]) -> str:
            result.count += 1
            result.kinds.append(kind)
            return REDACTED

        return sub

    for kind, pattern in _SECRET_PATTERNS:
        result.text = pattern.sub(replace_whole(kind), result.text)

    def replace_value(match: re.Match[str]) -> str:
        value = match.group("value")
        if value == REDACTED or _NOT_A_SECRET.match(value.strip()):
            return match.group(0)
        result.count += 1
        result.kinds.append("assignment")
        quote = match.group("quote")
        return f"{match.group('name')}{match.group('sep')}{quote}{REDACTED}{quote}"

    result.text = _ASSIGNMENT.sub(replace_value, result.text)

    def replace_unquoted(match: re.Match[str]) -> str:
        value = match.group("value")
        if REDACTED in value or _PLAIN_WORD.fullmatch(value) or _NOT_A_SECRET.match(value):
            return match.group(0)
        result.count += 1
        result.kinds.append("assignment")
        return f"{match.group('name')}{match.group('sep')}{REDACTED}"

    result.text = _UNQUOTED_ASSIGNMENT.sub(replace_unquoted, result.text)
    return result


def _pattern_regex(pattern: str) -> tuple[re.Pattern[str], bool, bool]:
    """A .gitignore pattern as (regex over a root-relative posix path, negated, dir_only)."""
    negated = pattern.startswith("!")
    if negated:
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.strip("/") if dir_only else pattern
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.lstrip("/")
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (close := pattern.find("]", i + 2)) != -1:
            # A bracket expression, [abc], [a-z] or [!abc]; never matching "/".
            body = pattern[i + 1 : close]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            chars = "".join(c if c.isalnum() or c == "-" else "\\" + c for c in body)
            try:
                re.compile(f"[{chars}]")
            except re.error:  # [z-a]: a range that is no range matches nothing, as in git
                out.append("(?!)")
                i = close + 1
                continue
            out.append(f"(?!/)[{'^' if negate else ''}{chars}]")
            i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    body = "".join(out)
    prefix = "" if anchored else "(?:.*/)?"
    # A pattern matches the path itself or anything below a matching directory.
    return re.compile(f"^{prefix}{body}(?:/.*)?$"), negated, dir_only


class PrivacyFilter:
    def __init__(self, settings: PrivacySettings | None = None, roots: list[Path] | None = None):
        self.configure(settings or PrivacySettings(), roots or [])

    def configure(self, settings: PrivacySettings, roots: list[Path]) -> None:
        self.redact_secrets = settings.redact_secrets
        self.roots = [Path(r) for r in roots]
        self._rules = [_pattern_regex(p.strip()) for p in settings.exclude if p.strip() and not p.startswith("#")]

    def is_secret_file(self, uri_or_path: str) -> bool:
        name = PurePosixPath(path_of(uri_or_path)).name.lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_FILES)

    def is_excluded(self, uri_or_path: str) -> bool:
        """True when the file must never be sent to the backend."""
        if self.is_secret_file(uri_or_path):
            return True
        if not self._rules:
            return False
        path = PurePosixPath(path_of(uri_or_path))
        relative = self._relative(path)
        excluded = False
        for regex, negated, dir_only in self._rules:
            target = relative
            if dir_only:  # only directories match: test the parent folders
                target = str(PurePosixPath(relative).parent)
                if target == ".":
                    continue
            if regex.match(target):
                excluded = not negated
        return excluded

    def _relative(self, path: PurePosixPath) -> str:
        for root in self.roots:
            try:
                return str(path.relative_to(PurePosixPath(root.as_posix())))
            except ValueError:
                continue
        return str(path).lstrip("/")

    def clean(self, text: str) -> str:
        """The text as it may be sent: secrets redacted (unless turned off)."""
        return redact(text).text if self.redact_secrets else text


# -- logs ------------------------------------------------------------------------------------

_known_secrets: set[str] = set()


def remember_secret(value: str | None) -> None:
    """A secret value in use (an API key): never written to a log, whatever its shape."""
    if value and len(value) >= 4:
        _known_secrets.add(value)


def mask(text: str) -> str:
    """`text` with known secret values and secret-looking strings replaced."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return redact(text).text


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
