"""Bytes to text for dataset files: BOMs, UTF-16/32, invalid UTF-8 and binary files, with located problems.

Knows nothing about JSON or CSV; it hands back text whose bad lines are marked, never raises.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from tunery.data.problems import ProblemLog

# Lone surrogates: what `surrogateescape` makes of bytes that are not UTF-8.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_MAGIC = (
    (b"\x1f\x8b", "compressed_file", "gzip-compressed"),
    (b"PK\x03\x04", "compressed_file", "a zip archive (an .xlsx workbook is one; export it as CSV)"),
    (b"BZh", "compressed_file", "bzip2-compressed"),
    (b"\x28\xb5\x2f\xfd", "compressed_file", "zstd-compressed"),
    (b"PAR1", "binary_file", "a Parquet file (name it .parquet)"),
    (b"SQLite format 3", "binary_file", "an SQLite database"),
)
_TEXT_CONTROLS = {9, 10, 11, 12, 13, 27}


@dataclass
class DecodedText:
    """The decoded text, the encoding it was read with, and the 1-based lines that were not UTF-8."""

    text: str
    encoding: str
    bad_lines: set[int] = field(default_factory=set)

    def lines(self) -> list[str]:
        """Lines split on LF only (CR stripped): U+2028 and friends may sit inside JSON strings."""
        parts = self.text.split("\n")
        if parts and parts[-1] == "":
            parts.pop()
        return [p[:-1] if p.endswith("\r") else p for p in parts]


def decode_bytes(raw: bytes, file: str, log: ProblemLog) -> DecodedText | None:
    """Decode a dataset file's bytes; None (with an error logged) when it is not text at all."""
    if not raw.strip():
        log.error("empty_file", "file is empty" if not raw else "file holds only whitespace", file=file)
        return None
    for magic, code, what in _MAGIC:
        if raw.startswith(magic):
            log.error(code, f"file is {what}, not text", file=file)
            return None
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            return _decode_with(raw[len(bom):], encoding, file, log)
    guessed = _guess_utf16(raw)
    if guessed:
        return _decode_with(raw, guessed, file, log)
    if b"\x00" in raw:
        offset = raw.index(b"\x00")
        log.error("binary_file", f"file contains NUL bytes (first at byte {offset}); it is not a text file",
                  file=file)
        return None
    if _looks_binary(raw):
        log.error("binary_file", "file is mostly control bytes; it is not a text file", file=file)
        return None
    return _decode_utf8(raw, file, log)


def _decode_with(raw: bytes, encoding: str, file: str, log: ProblemLog) -> DecodedText | None:
    if encoding == "utf-8":
        return _decode_utf8(raw, file, log)
    name = encoding.upper()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        log.error("invalid_encoding", f"file looks like {name} but byte {exc.start} cannot be decoded as {name}",
                  file=file, hint=f"save the file as UTF-8 (e.g. `iconv -f {name} -t UTF-8 in > out`)")
        return None
    log.warning("encoding_utf16", f"file is encoded as {name}; decoded it", file=file,
                hint=f"save the file as UTF-8 to silence this (e.g. `iconv -f {name} -t UTF-8`)")
    return DecodedText(text, encoding)


def _decode_utf8(raw: bytes, file: str, log: ProblemLog) -> DecodedText:
    try:
        return DecodedText(raw.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="surrogateescape")
    decoded = DecodedText("", "utf-8")
    clean_lines = []
    for number, line in enumerate(text.split("\n"), start=1):
        match = _ESCAPED_BYTE.search(line)
        if match:
            byte = ord(match.group()) - 0xDC00
            log.error("invalid_utf8", f"byte 0x{byte:02x} at column {match.start() + 1} is not valid UTF-8",
                      file=file, line=number)
            decoded.bad_lines.add(number)
            line = ""  # keep line numbering; the line itself is reported and skipped
        clean_lines.append(line)
    decoded.text = "\n".join(clean_lines)
    return decoded


def _guess_utf16(raw: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII-range text has a NUL in every other byte."""
    sample = raw[:4096]
    if len(sample) < 4:
        return None
    half = len(sample) // 2
    even_nuls = sum(1 for b in sample[0::2] if b == 0)
    odd_nuls = sum(1 for b in sample[1::2] if b == 0)
    if odd_nuls > 0.6 * half and even_nuls < 0.1 * half:
        return "utf-16-le"
    if even_nuls > 0.6 * half and odd_nuls < 0.1 * half:
        return "utf-16-be"
    return None


def _looks_binary(raw: bytes) -> bool:
    sample = raw[:65536]
    controls = sum(1 for b in sample if (b < 32 and b not in _TEXT_CONTROLS) or b == 127)
    return controls > 0.05 * len(sample)
