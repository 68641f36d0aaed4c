"""Finding secrets in text: where they are (byte spans), so that callers can redact them.

The rule set is gitleaks' (vendored as gitleaks.toml beside this file, MIT, with its commit),
plus a few rules of our own for what gitleaks does not cover and phi-lsp must never send:
private-key blocks (found over a whole document, so a block whose header lies above a prompt
window is still known), credentials in URLs (`user:pass@`, and the key-only user info of DSNs
such as Sentry's `https://KEY@o1.ingest.sentry.io/1`), Azure connection-string keys,
`Authorization` header values, the token shapes of tools we know well, and assignments such as
`password = "..."`.

It runs per keystroke, so it is built for speed: every pattern is compiled once, on bytes (RE2's
ASCII classes, as gitleaks has them), and a rule's regex only runs when one of its keywords is
in the text (gitleaks' own prefilter).
"""

from __future__ import annotations

import functools
import logging
import math
import re
import tomllib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RULES_FILE = Path(__file__).with_name("gitleaks.toml")
# Left out of gitleaks' set: our assignment rules cover these names, with fewer false alarms
# on ordinary code (gitleaks' generic rule would take `key = keys[0]` in a prompt).
SKIPPED_RULES = frozenset({"generic-api-key"})


@dataclass(frozen=True)
class Rule:
    id: str
    regex: re.Pattern[bytes]
    keywords: tuple[bytes, ...] = ()
    entropy: float = 0.0
    group: int | None = None  # the secret's group; None: the first group that matched, else all
    allow: tuple[re.Pattern[bytes], ...] = ()  # secrets that are not secrets
    allow_match: tuple[re.Pattern[bytes], ...] = ()  # whole matches that are not secrets
    stopwords: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str


def _go_to_python(pattern: str) -> str:
    """RE2 syntax to Python's: `\\z` is `\\Z`; a `(?i)` in the middle (RE2 scopes it to the
    rest of its group; Python refuses it) makes the whole pattern case-insensitive, which can
    only find more."""
    pattern = pattern.replace(r"\z", r"\Z")
    if "(?i)" in pattern[1:]:
        pattern = "(?i)" + pattern[:4].replace("(?i)", "") + pattern[4:].replace("(?i)", "")
    return pattern


def _compile(pattern: str) -> re.Pattern[bytes]:
    with warnings.catch_warnings():  # "possible nested set": RE2 and Python read these alike
        warnings.simplefilter("ignore", FutureWarning)
        return re.compile(_go_to_python(pattern).encode())


@functools.cache
def gitleaks_rules() -> tuple[Rule, ...]:
    data = tomllib.loads(RULES_FILE.read_text(encoding="utf-8"))
    rules = []
    for raw in data["rules"]:
        if raw["id"] in SKIPPED_RULES or "regex" not in raw or "path" in raw:
            continue  # rules about kinds of files (`path`) are SECRET_FILES' job
        allow, allow_match, stopwords = [], [], []
        for allowlist in raw.get("allowlists", []):
            if "paths" in allowlist:
                continue  # about file paths, not text
            target = allowlist.get("regexTarget", "secret")
            (allow_match if target in ("match", "line") else allow).extend(_compile(r) for r in allowlist.get("regexes", []))
            stopwords.extend(w.lower().encode() for w in allowlist.get("stopwords", []))
        try:
            regex = _compile(raw["regex"])
        except re.error as exc:  # keep the others; the test suite checks that none is lost
            log.warning("gitleaks rule %s does not compile here: %s", raw["id"], exc)
            continue
        rules.append(Rule(
            raw["id"], regex, tuple(k.lower().encode() for k in raw.get("keywords", [])),
            float(raw.get("entropy", 0.0)), raw.get("secretGroup"), tuple(allow), tuple(allow_match), tuple(stopwords),
        ))
    return tuple(rules)


# -- our own rules ----------------------------------------------------------------------------

_TOKEN = rb"[A-Za-z0-9_\-.~+/]"
OWN_RULES = (
    Rule("url-credentials", re.compile(rb"(?<=://)[^/\s:@'\"`]+:[^/\s@'\"`]{3,}(?=@)"), (b"://",)),
    # A DSN's user info without a password is its key (Sentry: https://<public key>@host/1).
    Rule("dsn-key", re.compile(rb"(?<=://)[A-Za-z0-9_\-]{16,}(?=@[\w.-]+\.[a-z]{2,})"), (b"://",)),
    Rule("azure-connection-string-key", re.compile(
        rb"(?i)\b(?:AccountKey|SharedAccessKey|SharedAccessSignature)\s*=\s*([^;\s'\"`]{8,})"),
         (b"accountkey", b"sharedaccess")),
    # `Authorization: Bearer <token>` (or Basic, Token) in code, headers, logs and error text:
    # the value only, and only one with a digit in it (`Bearer {token}` and prose stay).
    Rule("authorization-header", re.compile(
        rb"(?i)\b(?:bearer|basic|token)[ \t]+((?=" + _TOKEN + rb"*[0-9])" + _TOKEN + rb"{12,}=*)"),
         (b"bearer", b"basic", b"token")),
    Rule("aws-access-key", re.compile(rb"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"),
         (b"akia", b"asia", b"agpa", b"aida", b"aroa", b"anpa", b"anva", b"aipa")),
    Rule("github-token", re.compile(rb"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"),
         (b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_", b"github_pat_")),
    Rule("slack-token", re.compile(rb"\bxox[abposr]-[A-Za-z0-9-]{10,}\b"), (b"xox",)),
    Rule("openai-key", re.compile(rb"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}\b"), (b"sk-",)),
    Rule("google-api-key", re.compile(rb"\bAIza[0-9A-Za-z_-]{35}\b"), (b"aiza",)),
    Rule("stripe-key", re.compile(rb"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}\b"), (b"_live_", b"_test_")),
    Rule("huggingface-token", re.compile(rb"\bhf_[A-Za-z0-9]{30,}\b"), (b"hf_",)),
    Rule("gitlab-token", re.compile(rb"\bgl(?:pat|dt|rt|ptt|ft|cbt|oas|imt|soat|agent)-[A-Za-z0-9_\-.]{20,}"), (b"gl",)),
    Rule("jwt", re.compile(rb"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"), (b"eyj",)),
)

# Private-key blocks: from BEGIN to END; without an END, as far as lines look like key body.
_KEY_BEGIN = re.compile(rb"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(rb"-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
_KEY_BODY_LINE = re.compile(rb"[ \t'\"`,+]*(?:[A-Za-z0-9+/=]{4,}|[A-Za-z-]+: .*|)[ \t'\"`,+;)\\n]*\r?$")

_SECRET_NAME = rb"""(?<![\w.-])[\w.-]*(?:passw(?:or)?d|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token
        |access[_-]?token|private[_-]?key|client[_-]?secret|token|accountkey)[\w-]*"""
# password = "...", api_key: '...', "secret": "...", API_KEY: str = "...": keep the name, hide
# the value.
_ASSIGNMENT = re.compile(
    rb"""(?ix)
    (?P<name>""" + _SECRET_NAME + rb"""["']?)
    (?P<sep>[ \t]*(?::[ \t]*[a-z_][\w.\[\], |]*?[ \t]*)?(?::=|=>|[:=])[ \t]*)
    (?P<quote>["'`])(?P<value>[^"'`\n]{4,})(?P=quote)
    """
)
# Unquoted, as in shell, .ini, YAML or .properties files: `export AWS_SECRET_ACCESS_KEY=wJal...`,
# `password: hunter2-secret`. Only a value that runs to the end of its line (a comment aside)
# counts, and plain words and numbers stay: that keeps code such as `token = next_token` or
# `password = get_password()` or `max_tokens = 64` as it is.
_UNQUOTED_ASSIGNMENT = re.compile(
    rb"""(?imx)
    (?P<name>""" + _SECRET_NAME + rb""")
    (?P<sep>[ \t]*[:=][ \t]*)
    (?P<value>[^\s"'`,;(){}\[\]<>=\x00][^\s"'`,;(){}\[\]<>\x00]{5,})
    (?=[ \t]*(?:\#.*)?$)
    """
)
_ASSIGNMENT_KEYWORDS = (b"pass", b"pwd", b"secret", b"key", b"token")
_PLAIN_WORD = re.compile(rb"[A-Za-z_][A-Za-z_.]*|[0-9.]+")
# Values that are clearly not secrets (placeholders, lookups) stay, so code still reads right.
_NOT_A_SECRET = re.compile(rb"^(?:\$\{?\w+\}?|<[^>]*>|\*+|x+|changeme|example|dummy|test|none|null|\{\{.*\}\})$", re.I)


def entropy(data: bytes) -> float:
    """Shannon entropy in bits per byte (gitleaks' measure)."""
    counts = Counter(data)
    total = len(data)
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def key_blocks(data: bytes) -> list[Span]:
    """Private-key blocks, header to end, anywhere in `data` (a whole document)."""
    spans = []
    position = 0
    while (begin := _KEY_BEGIN.search(data, position)) is not None:
        end = _KEY_END.search(data, begin.end())
        nxt = _KEY_BEGIN.search(data, begin.end())
        if end is not None and (nxt is None or end.start() < nxt.start()):
            stop = end.end()
        else:  # unterminated: the lines after the header that look like key body
            stop = data.find(b"\n", begin.end())
            stop = len(data) if stop < 0 else stop
            while stop < len(data):
                line_end = data.find(b"\n", stop + 1)
                line_end = len(data) if line_end < 0 else line_end
                if not _KEY_BODY_LINE.fullmatch(data, stop + 1, line_end) or stop + 1 == line_end:
                    break
                stop = line_end
        spans.append(Span(begin.start(), stop, "private-key"))
        position = stop
    return spans


def keyword_regions(lowered: bytes, keywords: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """The stretches of lines (with one line of margin on each side) that hold a keyword: the
    only places a rule's regex has to look (a regex is far slower than a keyword search)."""
    finder = _keyword_finder(keywords)
    regions: list[tuple[int, int]] = []
    position = 0
    while (hit := finder.search(lowered, position)) is not None:
        start = lowered.rfind(b"\n", 0, max(0, lowered.rfind(b"\n", 0, hit.start()))) + 1
        end = lowered.find(b"\n", hit.end())
        end = len(lowered) if end < 0 else end
        after = lowered.find(b"\n", end + 1)
        end = len(lowered) if after < 0 else after
        if regions and start <= regions[-1][1] + 1:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((start, end))
        position = end
    return regions


@functools.lru_cache(maxsize=None)
def _keyword_finder(keywords: tuple[bytes, ...]) -> re.Pattern[bytes]:
    return re.compile(b"|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True)))


def _rule_spans(rule: Rule, data: bytes, lowered: bytes | None = None) -> list[Span]:
    if rule.keywords and lowered is not None:
        return [s for start, end in keyword_regions(lowered, rule.keywords) for s in _rule_spans_in(rule, data, start, end)]
    return _rule_spans_in(rule, data, 0, len(data))


def _rule_spans_in(rule: Rule, data: bytes, start: int, end: int) -> list[Span]:
    spans = []
    for match in rule.regex.finditer(data, start, end):
        if rule.group is not None:
            group = rule.group
        else:
            group = next((i for i in range(1, (rule.regex.groups or 0) + 1) if match.group(i) is not None), 0)
        secret = match.group(group)
        if not secret or (rule.entropy and entropy(secret) < rule.entropy):
            continue
        if any(a.search(secret) for a in rule.allow) or any(a.search(match.group(0)) for a in rule.allow_match):
            continue
        if rule.stopwords and any(w in secret.lower() for w in rule.stopwords):
            continue
        spans.append(Span(match.start(group), match.end(group), rule.id))
    return spans


def _assignment_spans(data: bytes, lowered: bytes) -> list[Span]:
    spans = []
    for start, end in keyword_regions(lowered, _ASSIGNMENT_KEYWORDS):
        spans += _assignment_spans_in(data, start, end)
    return spans


def _assignment_spans_in(data: bytes, start: int, end: int) -> list[Span]:
    spans = []
    for match in _ASSIGNMENT.finditer(data, start, end):
        value = match.group("value")
        if b"<redacted>" in value or b"\x00" in value or _NOT_A_SECRET.match(value.strip()):
            continue
        spans.append(Span(match.start("value"), match.end("value"), "assignment"))
    for match in _UNQUOTED_ASSIGNMENT.finditer(data, start, end):
        value = match.group("value")
        if b"<redacted>" in value or _PLAIN_WORD.fullmatch(value) or _NOT_A_SECRET.match(value):
            continue
        spans.append(Span(match.start("value"), match.end("value"), "assignment"))
    return spans


def find_line_secrets(data: bytes) -> list[Span]:
    """Secrets of every rule but the private-key blocks (which need the whole document)."""
    lowered = data.lower()
    spans: list[Span] = []
    present = {k for k in _keywords() if k in lowered}  # one fast search per distinct keyword
    for rule in _all_rules():
        if rule.keywords and not any(k in present for k in rule.keywords):
            continue
        spans.extend(_rule_spans(rule, data, lowered))
    if any(k in lowered for k in _ASSIGNMENT_KEYWORDS):
        spans.extend(_assignment_spans(data, lowered))
    return spans


@functools.cache
def _all_rules() -> tuple[Rule, ...]:
    return (*OWN_RULES, *gitleaks_rules())


@functools.cache
def _keywords() -> frozenset[bytes]:
    return frozenset(k for rule in _all_rules() for k in rule.keywords)


def find_secrets(data: bytes) -> list[Span]:
    """Every secret in `data`, merged: overlapping spans become one (the first one's kind)."""
    return merge([*key_blocks(data), *find_line_secrets(data)])


def merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, -s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                merged[-1] = Span(last.start, span.end, last.kind)
            continue
        merged.append(span)
    return merged
