"""Documents to passages: Markdown, plain text, HTML, CSV and PDF files become short, self-contained
pieces of text, each with the heading (or question, or table header) it belongs to.

A passage carries its context because it reaches the model alone: "Saturday 10:00-16:00" means little
without "Opening hours". Passages are about ``chunk_chars`` long: with 500 characters (~110 tokens)
three of them fit the default prompt budget (360 tokens) and a passage still holds a whole paragraph.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from avatar.errors import AvatarError

EXTENSIONS = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".html": "html",
              ".htm": "html", ".csv": "csv", ".pdf": "pdf"}
MAX_FILE_BYTES = 50 << 20  # a knowledge file larger than this is more likely a mistake than a document


class LoadError(AvatarError):
    """A document that cannot be read (damaged, encrypted, wrong encoding)."""

    code = "bad_document"


@dataclass(frozen=True)
class Section:
    title: str  # heading, question or row label; "" when the text stands alone
    text: str


def supported(path: Path) -> bool:
    """Whether ``path`` is a document this module reads (hidden and editor backup files are not)."""
    name = path.name
    return (path.suffix.lower() in EXTENSIONS and not name.startswith((".", "~"))
            and not name.endswith("~"))


def load_sections(path: Path) -> list[Section]:
    """The sections of one document, by its file extension."""
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise LoadError(f"{path.name}: unsupported file type; use one of {', '.join(sorted(EXTENSIONS))}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise LoadError(f"{path.name} is {size >> 20} MB; split it into files under {MAX_FILE_BYTES >> 20} MB")
    if kind == "pdf":
        return _pdf(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LoadError(f"{path.name} is not UTF-8 text; save it as UTF-8 and it is read again") from None
    return {"markdown": _markdown, "text": _plain, "html": _html, "csv": _csv}[kind](text)


def passages(sections: list[Section], chunk_chars: int) -> list[tuple[str, str]]:
    """(title, text) pieces of about ``chunk_chars`` characters, cut between paragraphs, then sentences."""
    out: list[tuple[str, str]] = []
    for section in sections:
        pieces: list[str] = []
        for paragraph in re.split(r"\n\s*\n", section.text):
            paragraph = re.sub(r"\s+", " ", paragraph).strip()
            if len(paragraph) <= chunk_chars:
                pieces.append(paragraph)
            else:
                pieces.extend(_sentences(paragraph, chunk_chars))
        current = ""
        for piece in filter(None, pieces):
            if current and len(current) + 1 + len(piece) > chunk_chars:
                out.append((section.title, current))
                current = piece
            else:
                current = f"{current} {piece}".strip()
        if current:
            out.append((section.title, current))
        elif section.title and not pieces:  # a heading alone still says something ("We are closed on Sundays")
            out.append(("", section.title))
    return out


def _sentences(text: str, limit: int) -> list[str]:
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?。！？])\s*", text):
        while len(sentence) > limit:  # a run-on "sentence" (a list without full stops): cut at a space
            cut = sentence.rfind(" ", 0, limit)
            cut = cut if cut > 0 else limit
            pieces.append(sentence[:cut])
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    return [*pieces, current] if current else pieces


def _plain(text: str) -> list[Section]:
    return [Section("", text)]


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|`|^\s*[-*+]\s+|^\s*>\s?)", re.MULTILINE)


def _markdown(text: str) -> list[Section]:
    """One section per heading; a heading's parents are kept in its title ("Prices > Repairs")."""
    sections: list[Section] = []
    trail: list[str] = []
    lines: list[str] = []

    def close() -> None:
        body = _MD_MARKS.sub("", _MD_LINK.sub(r"\1", "\n".join(lines))).strip()
        if body or trail:
            sections.append(Section(" > ".join(trail), body))
        lines.clear()

    for line in text.splitlines():
        heading = _MD_HEADING.match(line)
        if heading:
            close()
            level = len(heading.group(1))
            trail[level - 1 :] = [_MD_MARKS.sub("", heading.group(2))]
        else:
            lines.append(line)
    close()
    return [s for s in sections if s.text or s.title]


class _HTMLText(HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "tr", "table", "ul", "ol", "section", "article", "header", "footer",
              "dt", "dd", "blockquote", "address", "pre"}
    SKIP = {"script", "style", "noscript", "template", "svg", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.title = ""
        self._parts: list[str] = []
        self._heading: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._close()
            self._heading = []
        elif tag in self.BLOCKS:
            self._parts.append("\n\n" if tag in ("p", "div", "table", "ul", "ol", "section") else "\n")
        elif tag in ("td", "th"):
            self._parts.append(" | ")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            self.title = re.sub(r"\s+", " ", "".join(self._heading)).strip()
            self._heading = None

    def handle_data(self, data):
        if self._skip:
            return
        (self._heading if self._heading is not None else self._parts).append(data)

    def _close(self) -> None:
        body = re.sub(r"[ \t]+", " ", "".join(self._parts)).strip()
        if body or self.title:
            self.sections.append(Section(self.title, body))
        self._parts = []

    def result(self) -> list[Section]:
        self.close()
        self._close()
        return self.sections


def _html(text: str) -> list[Section]:
    """Visible text, one section per heading (h1-h6); scripts, styles and the <head> are left out."""
    parser = _HTMLText()
    parser.feed(text)
    return parser.result()


_QUESTION = ("question", "q", "frage", "问题")
_ANSWER = ("answer", "a", "antwort", "答案", "回答")


def _csv(text: str) -> list[Section]:
    """Question,answer rows become one section per question; any other table one section per row, each
    value labelled by its column ("Service: Basic tune-up; Price: $45")."""
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text), dialect)]
    rows = [row for row in rows if any(row)]
    if not rows:
        return []
    header = [h.lower() for h in rows[0]]
    q = next((header.index(n) for n in _QUESTION if n in header), None)
    a = next((header.index(n) for n in _ANSWER if n in header), None)
    if q is not None and a is not None:
        return [Section(row[q], row[a]) for row in rows[1:] if len(row) > max(q, a) and row[a]]
    names = rows[0]
    sections = []
    for row in rows[1:]:
        cells = [f"{names[i]}: {v}" if i < len(names) and names[i] else v for i, v in enumerate(row) if v]
        sections.append(Section("", "; ".join(cells) + "."))
    return sections


def _pdf(path: Path) -> list[Section]:
    """The text of each page (pypdf, pure Python); a scanned page without a text layer gives nothing."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise LoadError("reading PDF files needs pypdf. Fix: pip install pypdf==7.1.0") from None
    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(f"{path.name} is password-protected; save an unprotected copy in the folder")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, OSError) as exc:
        raise LoadError(f"{path.name} is not a readable PDF ({exc}); export it again or convert it to text")
    return [Section("", _unwrap(text)) for text in pages if text.strip()]


def _unwrap(text: str) -> str:
    """PDF text comes with a line break at the end of every printed line: join lines within a paragraph
    (a line ending without a full stop continues on the next), keep the breaks after full stops."""
    out = re.sub(r"(?<![.!?:。！？：])\n(?=\S)", " ", text)
    return re.sub(r"\n", "\n\n", out)
