"""From the model's raw text to a suggestion worth showing, or to nothing.

Each rule is a small function; `postprocess` runs them in order and says why it dropped a
suggestion (the reasons are counted, and golden tests pin each rule):

1. clean: chat artefacts (code fences, special tokens, an echo of the typed line);
2. shape: single-line vs multi-line from the syntax at the cursor; a multi-line suggestion is
   cut where the current block ends (indentation, or brace depth in C-like languages);
3. suffix: text that duplicates what already follows the cursor is removed;
4. repetition: loops ("a, a, a, a", a line three times, re-typing the lines that follow) are cut;
5. validity: the suggestion must not make the file's parse worse (more ERROR/MISSING nodes);
   it is cut back to its longest prefix that keeps the parse no worse, or dropped;
6. confidence: the mean token probability of what is kept must reach `min_confidence`.
Nothing is shown rather than something wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tree_sitter import Tree

from phi_lsp.core import positions, syntax
from phi_lsp.model.backend import Choice

MAX_LINES = 12
# Above this size a reparse costs the event loop 0.1 s or more (1.4 s at 10 MB), several per
# suggestion: the validity gate and the next-line prefetch are skipped there.
LARGE_DOCUMENT_BYTES = 1_000_000
_C_LIKE = {"javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp", "kotlin", "swift", "scala", "php"}
_SPECIAL_TOKENS = re.compile(r"<\|(?:endoftext|end|im_end|im_start|im_sep|assistant|user|system)\|>.*", re.S)
_CLOSERS = set(")]}\"'`;,:")


@dataclass
class CursorInfo:
    """What post-processing needs to know about the place of the cursor."""

    language: str | None
    source: bytes
    tree: Tree | None
    cursor: int  # byte offset
    line_prefix: str
    line_suffix: str
    next_lines: list[str] = field(default_factory=list)  # the document's lines after the cursor's

    @property
    def indent(self) -> str:
        return self.line_prefix[: len(self.line_prefix) - len(self.line_prefix.lstrip())]


@dataclass
class Outcome:
    text: str | None
    reason: str = "ok"  # why it was dropped, or which rule last changed it
    confidence: float | None = None
    changed_by: list[str] = field(default_factory=list)


def is_multiline_position(info: CursorInfo) -> bool:
    """Whether a suggestion here may span lines: on an empty line, or right after a block opener,
    and not inside a string or comment, and with nothing but closers after the cursor."""
    rest = info.line_suffix.strip()
    if rest and not all(c in _CLOSERS for c in rest):
        return False
    if _inside_string_or_comment(info):
        return False
    before = info.line_prefix.rstrip()
    if not before:
        return True
    if info.language == "python":
        return before.endswith(":")
    return before.endswith(("{", "=>", "(")) if info.language in _C_LIKE else before.endswith(":")


def _inside_string_or_comment(info: CursorInfo) -> bool:
    if info.tree is None:
        return False
    position = max(0, info.cursor - 1)
    root = info.tree.root_node
    for node in syntax.ancestors(root, root.descendant_for_byte_range(position, position)):
        if "comment" in node.type or node.type in ("string", "string_content", "template_string", "raw_string_literal", "string_literal"):
            # The cursor right after a closing quote is outside the string.
            return node.end_byte > info.cursor or (node.end_byte == info.cursor and "comment" in node.type)
    return False


# -- rules -----------------------------------------------------------------------------------


def clean(text: str, echo: str = "") -> str:
    return clean_with_offset(text, echo)[0]


def clean_with_offset(text: str, echo: str = "") -> tuple[str, int]:
    """The answer without special tokens, a code fence or a restated line prefix, and where in
    the answer what is kept starts (the confidence is measured from there)."""
    text = _SPECIAL_TOKENS.sub("", text)
    start = 0
    fenced = re.match(r"^\s*```[\w+-]*\n(.*?)(?:\n```.*)?$", text, re.S)
    if fenced:
        start, text = fenced.start(1), fenced.group(1)
    text = text.replace("\r\n", "\n")
    if echo.strip() and text.lstrip().startswith(echo.strip()) and len(text.strip()) > len(echo.strip()):
        # A chat model restated the typed part of the line: keep only what is new.
        skipped = len(text) - len(text.lstrip()) + len(echo.strip())
        start, text = start + skipped, text[skipped:]
    return text, start


def unheal(text: str, heal: str) -> tuple[str, int]:
    """The answer without the space that was left out of the prompt (token healing,
    completion/prompts.py), and how many characters went."""
    if heal and text.startswith(heal):
        return text[len(heal):], len(heal)
    return text, 0


def shape(text: str, info: CursorInfo, multiline: bool) -> str:
    """Keep the current line only, or the lines up to where the current block ends."""
    if not multiline:
        return text.split("\n", 1)[0]
    lines = text.split("\n")[:MAX_LINES]
    if len(lines) == 1:
        return lines[0]
    if info.language in _C_LIKE:
        return _cut_at_brace_close(lines)
    return _cut_at_dedent(lines, info)


def _indent_width(line: str) -> int:
    expanded = line.replace("\t", "    ")
    return len(expanded) - len(expanded.lstrip(" "))


def _cut_at_dedent(lines: list[str], info: CursorInfo) -> str:
    """Indentation languages: stop where a line is indented less than the block we are in."""
    opener = info.line_prefix.rstrip().endswith(":")
    base = _indent_width(info.line_prefix)
    if not info.line_prefix.strip():
        # On a blank line the suggestion's first line sets the block it writes into.
        base += _indent_width(lines[0])
    elif opener:
        base += 1  # the body of the block just opened is indented deeper
    kept = [lines[0]]
    for line in lines[1:]:
        if line.strip() and _indent_width(line) < base:
            break
        kept.append(line)
    while len(kept) > 1 and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept)


def _cut_at_brace_close(lines: list[str]) -> str:
    """C-like languages: stop before a brace that would close the enclosing block."""
    depth = 0
    kept: list[str] = []
    for line in lines:
        for index, char in enumerate(line):
            if char in "{([":
                depth += 1
            elif char in "})]":
                depth -= 1
                if depth < 0:
                    head = line[:index]
                    if head.strip():
                        kept.append(head.rstrip())
                    return "\n".join(kept).rstrip()
        kept.append(line)
    while len(kept) > 1 and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept)


def drop_suffix_overlap(text: str, info: CursorInfo) -> str:
    """Remove what the document already has after the cursor."""
    rest = info.line_suffix
    if rest and "\n" not in text:
        stripped = rest.strip()
        answer = text.rstrip()
        # No overlap is longer than the answer: on a long line, trying every length of the
        # rest of the line was quadratic in it (2 s on a 300 KB minified line).
        for k in range(min(len(stripped), len(answer)), 0, -1):
            if answer.endswith(stripped[:k]):
                return answer[: len(answer) - k]
    if "\n" in text and info.next_lines:
        lines = text.split("\n")
        following = [line.strip() for line in info.next_lines if line.strip()][:MAX_LINES]
        for start in range(1, len(lines)):
            tail = [line.strip() for line in lines[start:] if line.strip()]
            if tail and tail == following[: len(tail)]:
                return "\n".join(lines[:start]).rstrip()
    return text


_REPEATED = re.compile(r"(.{3,}?)\1{3,}", re.S)


def cut_repetition(text: str, info: CursorInfo) -> str:
    # A phrase repeated four times or more in a row: keep the first occurrence. Only a phrase
    # with a word and a symbol in it: indentation, 0xFFFFFFFF, 1_000_000 and "# -----" repeat
    # characters without being a loop of the model.
    for match in _REPEATED.finditer(text):
        unit = match.group(1)
        if re.search(r"\w", unit) and re.search(r"[^\w\s]|\n", unit):
            text = text[: match.start() + len(unit)]
            break
    lines = text.split("\n")
    seen: dict[str, int] = {}
    for index, line in enumerate(lines):
        key = line.strip()
        if len(key) > 3:
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 2 and index > 0 and lines.count(line) >= 2 and _repeats_block(lines, index):
                return "\n".join(lines[:index]).rstrip()
    return text


def _repeats_block(lines: list[str], index: int) -> bool:
    # A line equal to an earlier one is fine (two `return x` in branches); a run of them is not.
    key = lines[index].strip()
    return sum(1 for line in lines if line.strip() == key) >= 3 or (
        index + 1 < len(lines) and lines[index + 1].strip() in {l.strip() for l in lines[:index]}
    )


def parse_penalty(info: CursorInfo, text: str) -> int:
    """How many ERROR/MISSING nodes inserting `text` at the cursor adds (negative: it fixes)."""
    if info.tree is None or not info.language:
        return 0
    parser = syntax.parser_for(info.language)
    if parser is None:
        return 0
    inserted = positions.encode(text)
    source = info.source[: info.cursor] + inserted + info.source[info.cursor :]
    tree = info.tree.copy()
    start_point = _point(info.source, info.cursor)
    end = info.cursor + len(inserted)
    tree.edit(
        start_byte=info.cursor,
        old_end_byte=info.cursor,
        new_end_byte=end,
        start_point=start_point,
        old_end_point=start_point,
        new_end_point=_point(source, end),
    )
    after = parser.parse(source, tree)
    return syntax.error_count(after.root_node) - syntax.error_count(info.tree.root_node)


def _point(source: bytes, offset: int) -> tuple[int, int]:
    return (source.count(b"\n", 0, offset), offset - (source.rfind(b"\n", 0, offset) + 1))


def _cut_points(text: str) -> list[str]:
    """Shorter versions of `text` to try, longest first: whole lines, then token boundaries."""
    candidates = []
    lines = text.split("\n")
    for n in range(len(lines) - 1, 0, -1):
        candidate = "\n".join(lines[:n]).rstrip()
        if candidate.strip():
            candidates.append(candidate)
    first = lines[0]
    boundaries = [m.start() for m in re.finditer(r"[\s(),\[\]{}:;]", first) if m.start() > 0]
    for index in sorted(set(boundaries), reverse=True)[:6]:
        candidate = first[:index].rstrip()
        if candidate.strip() and candidate not in candidates:
            candidates.append(candidate)
    return candidates


def validity_gate(text: str, info: CursorInfo) -> tuple[str | None, bool]:
    """The longest version of `text` that does not make the parse worse; (text, was_cut)."""
    if len(info.source) > LARGE_DOCUMENT_BYTES:
        return text, False
    if parse_penalty(info, text) <= 0:
        return text, False
    for candidate in _cut_points(text)[:8]:
        if parse_penalty(info, candidate) <= 0:
            return candidate, True
    return None, True


# -- the pipeline ----------------------------------------------------------------------------


def postprocess(
    choice: Choice,
    info: CursorInfo,
    multiline: bool,
    min_confidence: float = 0.0,
    echo: str = "",
    heal: str = "",
) -> Outcome:
    outcome = Outcome(None)
    text, start = clean_with_offset(choice.text, echo)
    if text != choice.text:
        outcome.changed_by.append("clean")
    text, healed = unheal(text, heal)
    start += healed
    steps = (
        ("shape", lambda t: shape(t, info, multiline)),
        ("suffix", lambda t: drop_suffix_overlap(t, info)),
        ("repetition", lambda t: cut_repetition(t, info)),
    )
    for name, step in steps:
        new = step(text)
        if new != text:
            outcome.changed_by.append(name)
        text = new
    text = text.rstrip() if "\n" in text else text.rstrip("\n")
    if not text.strip():
        outcome.reason = "empty"
        return outcome
    gated, cut = validity_gate(text, info)
    if gated is None:
        outcome.reason = "syntax"
        return outcome
    if cut:
        outcome.changed_by.append("syntax")
    text = gated
    confidence = choice.confidence(len(text), start)  # over what is shown, not what was restated
    outcome.confidence = confidence
    if confidence is not None and confidence < min_confidence:
        outcome.reason = "low-confidence"
        return outcome
    outcome.text = text
    return outcome
