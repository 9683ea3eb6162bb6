"""The boundary for user files: strict text decoding, located errors for every OS failure, bounded
line reads, no silent overwrite, owner-only files for what holds prompts and answers.

Knows nothing about formats (JSON, YAML, CSV): callers parse the text this module hands back.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from tunery.errors import ConfigError, DataError, TuneryError

MAX_LINE_BYTES = 8 * 1024 * 1024  # one JSONL row / YAML line; past it a located error, never a 10 GB read
MAX_TEXT_FILE_BYTES = 64 * 1024 * 1024  # configs and task files read whole
MAX_FILE_BYTES = 1024 * 1024 * 1024  # a dataset file read whole (a JSON array, a CSV, a document)
MAX_EXAMPLE_CHARS = 8 * 1024 * 1024  # one example's text, before it is tokenized
# Each cap can be raised (or lowered) for one command with its environment variable.
CAP_ENV = {"line": "TUNERY_MAX_LINE_BYTES", "file": "TUNERY_MAX_FILE_BYTES", "example": "TUNERY_MAX_EXAMPLE_CHARS"}
_CAP_DEFAULTS = {"line": MAX_LINE_BYTES, "file": MAX_FILE_BYTES, "example": MAX_EXAMPLE_CHARS}
# Lone surrogates (what JSON `\ud800` escapes decode to) cannot be encoded as UTF-8; NUL ends C strings.
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")

_OS_REASONS = {
    errno.ENOENT: ("does not exist", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "pass a file"),
    errno.ENOTDIR: ("has a file where a folder is expected", "check the path"),
    errno.ELOOP: ("is a symbolic link loop", "point the link at a real file"),
    errno.EACCES: ("is not readable/writable by this user", "check the file's permissions"),
    errno.EPERM: ("is not permitted", "check the file's permissions"),
    errno.ENOSPC: ("cannot be written: the disk is full", "free some space"),
    errno.EROFS: ("is on a read-only file system", "choose a writable location"),
    errno.ENAMETOOLONG: ("has a name that is too long", "use a shorter path"),
}


def cap(kind: str) -> int:
    """The `line`, `file` or `example` cap: its environment variable when set, else the default."""
    name = CAP_ENV[kind]
    raw = os.environ.get(name, "").strip()
    if not raw:
        return _CAP_DEFAULTS[kind]
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name} must be a positive whole number", code="invalid_setting",
                          hint=f"e.g. {name}={_CAP_DEFAULTS[kind] * 4}")
    return int(raw)


def cap_hint(kind: str, value: int) -> str:
    """How to raise a cap, for the hint of the error it caused."""
    return f"to allow more, set {CAP_ENV[kind]} (now {value:,}), e.g. {CAP_ENV[kind]}={value * 4}"


def first_long_line(path: str | Path, max_bytes: int, chunk_bytes: int = 1 << 20) -> int | None:
    """The 1-based number of the first line longer than `max_bytes`, streamed in chunks; None if none is."""
    line_no, length = 1, 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                if length + end - start > max_bytes:
                    return line_no
                line_no, length, start = line_no + 1, 0, end + 1
            length += len(chunk) - start
            if length > max_bytes:
                return line_no
    return None


def os_error(exc: OSError, path: str | Path | None = None, *, what: str = "file",
             error: type[TuneryError] = DataError) -> TuneryError:
    """A TuneryError naming the file and the real cause of an OSError, with a hint."""
    where = path if path is not None else (exc.filename or "")
    reason, hint = _OS_REASONS.get(exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path"))
    return error(f"{what} {where} {reason}", code="file_error", hint=hint)


def check_text(value: str) -> str | None:
    """Why `value` is not clean text (a lone surrogate or a NUL), or None when it is."""
    match = _BAD_CHARS.search(value)
    if match is None:
        return None
    kind = "a NUL character" if match.group() == "\x00" else "a lone UTF-16 surrogate (not encodable as UTF-8)"
    return f"contains {kind} at character {match.start() + 1}"


def regular_file(path: str | Path, *, what: str = "file", error: type[TuneryError] = DataError) -> Path:
    """`path` if it is an existing regular file (not a folder, device, FIFO or link loop), else a located error."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise os_error(exc, path, what=what, error=error) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a folder, not a file", code="file_error", hint="pass a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file (a device, pipe or socket)", code="file_error",
                    hint="pass a file")
    return path


def decode_line(raw: bytes, where: str, error: type[TuneryError] = DataError) -> str:
    """Strict UTF-8 of one line; bad bytes, NULs and surrogates are an error naming line and column."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = len(raw[:exc.start].decode("utf-8", "replace")) + 1
        raise error(f"{where}: not UTF-8 text (column {column})", code="not_utf8",
                    hint="save the file as UTF-8; a binary file cannot be read here") from None
    problem = check_text(text)
    if problem:
        raise error(f"{where}: {problem}", code="invalid_text", hint="save the file as plain UTF-8 text")
    return text


def read_text(path: str | Path, *, what: str = "file", error: type[TuneryError] = DataError,
              max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """A whole small text file (configs, task lists), strictly decoded, with located errors."""
    lines = read_lines(path, what=what, error=error, max_total_bytes=max_bytes)
    return "".join(line for _, line in lines).removeprefix("\ufeff")


def read_lines(path: str | Path, *, what: str = "file", error: type[TuneryError] = DataError,
               max_line_bytes: int | None = None, max_total_bytes: int | None = None,
               ) -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its newline), streamed: memory stays within the line cap."""
    path = regular_file(path, what=what, error=error)
    max_line_bytes = max_line_bytes or cap("line")
    total = 0
    try:
        with path.open("rb") as handle:
            line_no = 0
            while True:
                raw = handle.readline(max_line_bytes + 1)
                if not raw:
                    return
                line_no += 1
                if len(raw) > max_line_bytes:
                    raise error(f"{path}:{line_no}: line longer than {max_line_bytes:,} bytes", code="line_too_long",
                                hint="one record per line (a missing newline?); " + cap_hint("line", max_line_bytes))
                total += len(raw)
                if max_total_bytes is not None and total > max_total_bytes:
                    raise error(f"{what} {path} is larger than {max_total_bytes:,} bytes", code="file_too_large",
                                hint="split the file")
                yield line_no, decode_line(raw, f"{path}:{line_no}", error)
    except OSError as exc:
        raise os_error(exc, path, what=what, error=error) from None


def writable_target(path: str | Path, *, overwrite: bool = False, what: str = "output",
                    flag: str = "--overwrite", error: type[TuneryError] = ConfigError) -> Path:
    """`path` as a file target: refused if it is a folder or not a regular file, or exists without `overwrite`."""
    path = Path(path)
    try:
        info = path.lstat() if path.is_symlink() else path.stat()
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise os_error(exc, path, what=what, error=error) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {path} is a folder", code="target_is_folder", hint="pass a file path inside it")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {path} is not a regular file", code="target_not_file", hint="pass a file path")
    if not overwrite:
        raise error(f"{what} {path} already exists", code="target_exists",
                    hint=f"pass {flag} to replace it, or choose another path")
    return path


def write_private_text(path: str | Path, text: str, *, what: str = "output",
                       error: type[TuneryError] = ConfigError) -> None:
    """Write atomically (temp file then rename) with mode 0600; no temp file is left on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(exc, path, what=what, error=error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_private(path: str | Path, mode: str = "w", **kwargs):
    """`open(path, mode)` for a file holding prompts, answers or weights: created (or made) 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def apply_umask(path: str | Path) -> None:
    """Files and folders under `path` get the modes a plain `open` gives them (0666/0777 less the umask).

    safetensors writes weights 0600 through a temporary file, so a run's weights were unreadable where
    its config and metrics were readable; this makes a run's files alike. Links are left alone.
    """
    mask = os.umask(0)
    os.umask(mask)
    path = Path(path)
    if path.is_symlink():
        return
    if path.is_dir():
        path.chmod(0o777 & ~mask)
        for child in path.iterdir():
            apply_umask(child)
    elif path.exists():
        path.chmod(0o666 & ~mask)


def make_private(path: str | Path) -> None:
    """Owner-only, recursively: folders 0700, files 0600 (links are left alone)."""
    path = Path(path)
    if path.is_symlink():
        return
    if path.is_dir():
        path.chmod(0o700)
        for child in path.iterdir():
            make_private(child)
    elif path.exists():
        path.chmod(0o600)
