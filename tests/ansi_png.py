"""Renders a terminal capture (`tmux capture-pane -e -p`: text with SGR colour escapes) to a PNG,
one monospace cell per character, with the cursor as a block. Used for the Neovim screenshots;
only the SGR codes tmux writes are handled (reset, bold, italic, underline, reverse, 16/256/RGB
colours)."""

from __future__ import annotations

import re
from pathlib import Path

SGR = re.compile(r"\x1b\[([0-9;:]*)m")
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
DEFAULT_FG, DEFAULT_BG = (224, 226, 234), (20, 22, 27)  # Neovim 0.11's default dark scheme

_BASE16 = [(0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188), (17, 168, 205),
           (229, 229, 229), (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67), (59, 142, 234),
           (214, 112, 214), (41, 184, 219), (255, 255, 255)]


def _xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return _BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    level = 8 + (n - 232) * 10
    return level, level, level


def parse(capture: str) -> list[list[tuple[str, dict]]]:
    """Rows of (character, style) cells."""
    rows = []
    style = {"fg": None, "bg": None, "bold": False, "italic": False, "underline": False, "reverse": False}
    for line in capture.split("\n"):
        cells = []
        pos = 0
        for m in SGR.finditer(line):
            cells += [(ch, dict(style)) for ch in line[pos:m.start()]]
            pos = m.end()
            codes = [int(c) if c else 0 for c in re.split("[;:]", m.group(1))] or [0]
            i = 0
            while i < len(codes):
                c = codes[i]
                if c == 0:
                    style.update(fg=None, bg=None, bold=False, italic=False, underline=False, reverse=False)
                elif c == 1:
                    style["bold"] = True
                elif c == 3:
                    style["italic"] = True
                elif c == 4:
                    style["underline"] = True
                elif c == 7:
                    style["reverse"] = True
                elif c == 22:
                    style["bold"] = False
                elif c == 23:
                    style["italic"] = False
                elif c == 24:
                    style["underline"] = False
                elif c == 27:
                    style["reverse"] = False
                elif 30 <= c <= 37 or 90 <= c <= 97:
                    style["fg"] = _BASE16[c - 30 if c < 90 else c - 90 + 8]
                elif 40 <= c <= 47 or 100 <= c <= 107:
                    style["bg"] = _BASE16[c - 40 if c < 100 else c - 100 + 8]
                elif c in (38, 48):
                    key = "fg" if c == 38 else "bg"
                    if i + 1 < len(codes) and codes[i + 1] == 5 and i + 2 < len(codes):
                        style[key] = _xterm256(codes[i + 2])
                        i += 2
                    elif i + 1 < len(codes) and codes[i + 1] == 2 and i + 4 < len(codes):
                        style[key] = tuple(codes[i + 2:i + 5])
                        i += 4
                elif c == 39:
                    style["fg"] = None
                elif c == 49:
                    style["bg"] = None
                i += 1
        cells += [(ch, dict(style)) for ch in line[pos:]]
        rows.append(cells)
    return rows


def render(capture: str, path: Path, cursor: tuple[int, int] | None = None, size: int = 15,
           columns: int | None = None) -> Path:
    from PIL import Image, ImageDraw, ImageFont

    fonts = {}
    for key, name in {(False, False): "DejaVuSansMono.ttf", (True, False): "DejaVuSansMono-Bold.ttf",
                      (False, True): "DejaVuSansMono-Oblique.ttf", (True, True): "DejaVuSansMono-BoldOblique.ttf"}.items():
        for folder in FONT_DIRS:
            if (Path(folder) / name).exists():
                fonts[key] = ImageFont.truetype(str(Path(folder) / name), size)
                break
        else:
            fonts[key] = fonts.get((False, False)) or ImageFont.load_default()
    rows = parse(capture.rstrip("\n"))
    width = columns or max((len(r) for r in rows), default=1)
    cell_w = round(fonts[(False, False)].getlength("M"))
    cell_h = round(size * 1.35)
    image = Image.new("RGB", (width * cell_w + 16, len(rows) * cell_h + 16), DEFAULT_BG)
    draw = ImageDraw.Draw(image)
    for y, row in enumerate(rows):
        for x, (ch, style) in enumerate(row[:width]):
            fg, bg = style["fg"] or DEFAULT_FG, style["bg"] or DEFAULT_BG
            if style["reverse"]:
                fg, bg = bg, fg
            if cursor == (x, y):
                fg, bg = DEFAULT_BG, DEFAULT_FG
            left, top = 8 + x * cell_w, 8 + y * cell_h
            if bg != DEFAULT_BG:
                draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], fill=bg)
            if ch.strip():
                draw.text((left, top + 2), ch, fill=fg, font=fonts[(style["bold"], style["italic"])])
            if style["underline"]:
                draw.line([left, top + cell_h - 2, left + cell_w - 1, top + cell_h - 2], fill=fg)
        if cursor and cursor[1] == y and cursor[0] >= len(row):
            left, top = 8 + cursor[0] * cell_w, 8 + y * cell_h
            draw.rectangle([left, top, left + cell_w - 1, top + cell_h - 1], fill=DEFAULT_FG)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path


def plain(capture: str) -> str:
    return SGR.sub("", capture)
