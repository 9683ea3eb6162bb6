"""Read documents for an index: text, Markdown, HTML (text only), PDF and JSONL `text` rows, and folders.

Files are streamed in sections that end at paragraph boundaries, so a 200 MB file never sits in
memory whole. A file that cannot be read as text is skipped with a warning naming it. Knows
nothing of tokenizers or indexes.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tunery.errors import DataError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".jsonl"}
SECTION_CHARS = 16_000  # a section closes at the first paragraph end past this many characters
READ_BLOCK = 1 << 20

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Section:
    """A stretch of one document: its text, the page (PDF) or None, its first line, its char offset.

    `offset` counts characters from the start of the file (of the page for a PDF, of the row's
    text for JSONL), so `text == document[offset:offset + len(text)]`.
    """

    source: str
    text: str
    page: int | None
    line: int
    offset: int


@dataclass(frozen=True)
class SourceFile:
    """One input file: its path, the name citations show, and its content hash."""

    path: Path
    name: str
    sha256: str
    size: int


def find_sources(inputs: list[str | Path], warn: Warn) -> list[SourceFile]:
    """Every readable document under `inputs` (files and folders), sorted, each checked and hashed.

    Hidden files, unsupported types, binary and non-UTF-8 files are skipped with a warning.
    Raises when an input does not exist or nothing readable is left.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise DataError(f"{path} does not exist", code="file_not_found",
                            hint="pass documents or folders of .txt, .md, .html, .pdf or .jsonl files")
        if path.is_dir():
            indexes = index_folders(path, warn)
            files = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts)
                           and not any(folder in p.parents for folder in indexes))
            found += [(p, str(Path(path.resolve().name) / p.relative_to(path))) for p in files]
        else:
            found.append((path, path.name))
    sources, names = [], dict[str, Path]()
    for path, name in found:
        if name in names:
            raise DataError(f"{path} and {names[name]} would both be cited as {name!r}", code="duplicate_source",
                            hint="index them from their common folder instead")
        names[name] = path
        source = check_source(path, name, warn)
        if source is not None:
            sources.append(source)
    if not sources:
        what = ", ".join(str(i) for i in inputs)
        raise DataError(f"no readable document in {what}", code="no_documents",
                        hint="an index needs at least one .txt, .md, .html, .pdf or .jsonl file with text")
    return sources


def index_folders(folder: Path, warn: Warn) -> list[Path]:
    """Tunery indexes under `folder` (an index kept beside its documents): never read as documents, or the
    next --update or --rebuild would index the old index's chunks.jsonl into the new one."""
    found = [manifest.parent for manifest in folder.rglob("manifest.json")
             if (manifest.parent / "chunks.jsonl").is_file() and (manifest.parent / "bm25").is_dir()]
    for index in found:
        if not any(part.startswith(".") for part in index.relative_to(folder).parts):  # hidden: left out anyway
            warn(f"{index}: skipped: a tunery index, not documents")
    return found


def check_source(path: Path, name: str, warn: Warn) -> SourceFile | None:
    """Hash the file in one streamed pass; None (with a warning) for unsupported, binary or non-UTF-8 files."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        warn(f"{path}: skipped: unsupported file type {suffix or '(none)'!r}")
        return None
    digest, size = hashlib.sha256(), 0
    decoder = codecs.getincrementaldecoder("utf-8")() if suffix != ".pdf" else None
    try:
        with path.open("rb") as handle:
            while block := handle.read(READ_BLOCK):
                if decoder is not None:
                    if b"\x00" in block:
                        warn(f"{path}: skipped: binary content (a NUL byte near byte {size + block.index(0)})")
                        return None
                    decoder.decode(block)
                digest.update(block)
                size += len(block)
            if decoder is not None:
                decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        warn(f"{path}: skipped: not UTF-8 text (undecodable byte near byte {size + exc.start})")
        return None
    except OSError as exc:
        warn(f"{path}: skipped: cannot be read ({exc.strerror or exc})")
        return None
    return SourceFile(path=path, name=name, sha256=digest.hexdigest(), size=size)


def read_sections(source: SourceFile, warn: Warn) -> Iterator[Section]:
    """The sections of one checked file, by its type."""
    suffix = source.path.suffix.lower()
    if suffix == ".pdf":
        yield from read_pdf(source, warn)
    elif suffix == ".jsonl":
        yield from read_jsonl(source, warn)
    elif suffix in HTML_SUFFIXES:
        yield from read_html(source)
    else:
        yield from read_text(source)


def read_text(source: SourceFile) -> Iterator[Section]:
    """Plain text and Markdown, streamed: sections close at a blank line once past SECTION_CHARS."""
    with source.path.open(encoding="utf-8", newline="") as handle:
        yield from _sections_from_lines(source.name, _lines(handle), page=None)


def _lines(handle) -> Iterator[str]:
    # readline with a limit: a file with one enormous line still arrives in bounded pieces.
    while piece := handle.readline(READ_BLOCK):
        yield piece


def _sections_from_lines(name: str, lines, page: int | None) -> Iterator[Section]:
    parts: list[str] = []
    size, offset, line_no, start_offset, start_line = 0, 0, 1, 0, 1
    for piece in lines:
        if not parts:
            start_offset, start_line = offset, line_no
        parts.append(piece)
        size += len(piece)
        offset += len(piece)
        if piece.endswith("\n"):
            line_no += 1
        if size >= SECTION_CHARS and (not piece.strip() or size >= 4 * SECTION_CHARS):
            yield from _section(name, "".join(parts), page, start_line, start_offset)
            parts, size = [], 0
    if parts:
        yield from _section(name, "".join(parts), page, start_line, start_offset)


def _section(name: str, text: str, page: int | None, line: int, offset: int) -> Iterator[Section]:
    if text.strip():
        yield Section(source=name, text=text, page=page, line=line, offset=offset)


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page; block tags become line breaks, scripts and styles are dropped."""

    BLOCKS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
              "article", "header", "footer", "pre", "blockquote", "hr", "title"}
    HIDDEN = {"script", "style", "noscript", "template", "svg", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN and tag != "head":
            self.hidden += 1
        if tag in self.BLOCKS:
            self.out.append("\n\n" if tag in {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "title"} else "\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and tag != "head" and self.hidden:
            self.hidden -= 1
        if tag in self.BLOCKS:
            self.out.append("\n\n" if tag in {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "title"} else "\n")

    def handle_data(self, data):
        if not self.hidden:
            self.out.append(" ".join(data.split()) + (" " if data[-1:].isspace() else ""))

    def take(self) -> str:
        text, self.out = "".join(self.out), []
        return text


def read_html(source: SourceFile) -> Iterator[Section]:
    """Visible text of an HTML file, streamed through the parser; lines count the extracted text."""
    parser = _TextExtractor()

    def pieces() -> Iterator[str]:
        with source.path.open(encoding="utf-8") as handle:
            while block := handle.read(READ_BLOCK):
                parser.feed(block)
                yield from _split_keep_ends(_collapse_blank_lines(parser.take()))
        parser.close()
        yield from _split_keep_ends(_collapse_blank_lines(parser.take()))

    yield from _sections_from_lines(source.name, pieces(), page=None)


def _collapse_blank_lines(text: str) -> str:
    lines = [line.strip() for line in text.split("\n")]
    out, blank = [], False
    for line in lines:
        if line or not blank:
            out.append(line)
        blank = not line
    return "\n".join(out)


def _split_keep_ends(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def read_pdf(source: SourceFile, warn: Warn) -> Iterator[Section]:
    """The text layer of each page (pypdf); a PDF with no text at all is skipped with a warning."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    found, pages = False, 0
    with _pypdf_notes(source.path, warn):
        try:
            reader = PdfReader(str(source.path))
            if reader.is_encrypted:
                warn(f"{source.path}: skipped: the PDF is encrypted")
                return
            for page_no, page in enumerate(reader.pages, start=1):
                text = page.extract_text() or ""
                pages = page_no
                if text.strip():
                    found = True
                    yield from _sections_from_lines(source.name, _split_keep_ends(text), page=page_no)
        except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
            what = f"skipped from page {pages + 1} on" if pages else "skipped"
            warn(f"{source.path}: {what}: the PDF cannot be read ({type(exc).__name__}: {exc})")
            return
    if not found:
        warn(f"{source.path}: skipped: the PDF has no text layer (a scan? run OCR on it first)")


@contextmanager
def _pypdf_notes(path: Path, warn: Warn, most: int = 3) -> Iterator[None]:
    """pypdf's own log lines about a damaged file become warnings naming it (the first `most` of them),
    instead of unattributed lines on stderr."""
    logger = logging.getLogger("pypdf")
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message not in seen:
                seen.append(message)
                if len(seen) <= most:
                    warn(f"{path}: pypdf: {message}")

    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        if len(seen) > most:
            warn(f"{path}: pypdf: {len(seen) - most} more notes")


def read_jsonl(source: SourceFile, warn: Warn) -> Iterator[Section]:
    """One section per row with a string `text` field; other rows are skipped with a warning naming the line."""
    with source.path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                warn(f"{source.path}:{line_no}: skipped: not valid JSON ({exc.msg})")
                continue
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str):
                warn(f"{source.path}:{line_no}: skipped: no string field \"text\"")
                continue
            yield from _section(source.name, text, None, line_no, 0)
