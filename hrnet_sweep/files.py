"""Files in and out, safely: every write is atomic and every read is checked first.

* `atomic_path` / `atomic_write_text` / `atomic_write_json`: write to a temporary file next
  to the target and rename it, so a crash or a full disk half way never leaves a
  half-written preset, CSV, manifest or checkpoint behind (the previous file stays).
* `check_writable`: before expensive work, that an output path can be written (not a
  folder, not under a file, not on a read-only filesystem).
* `check_readable_file`: before opening, that an input is a regular readable file (a
  FIFO would block the reader for ever; a folder or a device is no input either).
* `read_text` / `read_json`: UTF-8 text and JSON whose every failure is a `DataError`
  naming the file (and for JSON the line and column).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError

__all__ = [
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "check_readable_file",
    "check_writable",
    "read_json",
    "read_text",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    On any exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise DataError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, *, what: str = "output", overwrite: bool = True) -> Path:
    """Fail before any expensive work when `path` cannot be written later.

    Refused, each with a `DataError` naming the path: an empty name, a directory, an
    existing file without `overwrite`, a parent that is a regular file, and a folder where
    no file can be created (read-only filesystem, permissions). Missing parent folders are
    created, as the atomic write would create them.
    """
    if not str(path).strip():
        raise DataError(f"{what}: the path is empty; name a file")
    path = Path(path).expanduser()
    if path.is_dir():
        raise DataError(f"{what} {path}: is a directory; name a file inside it")
    if path.exists() and not overwrite:
        raise DataError(f"{what} {path} exists; pass --force to overwrite it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{what} {path}: cannot be created, {folder} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise DataError(f"{what} {path}: cannot write there ({err.strerror or err})") from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, *, overwrite: bool = True, indent: int | None = None) -> Path:
    """Write `obj` as JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False), overwrite=overwrite)


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_readable_file(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` when it is a regular file this process may read; else a `DataError` naming it.

    Every reader calls this before opening: opening a FIFO for reading blocks until a
    writer comes, which may be never, and a directory or a device is no input either.
    `what` names the input when it is missing ("x.jpg: image file not found").
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"{path}: {what} not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, not a regular file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        raise DataError(f"{path}: is {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read it (permission denied)")
    return path


def read_json(path: str | os.PathLike, *, object_pairs_hook=None):
    """Read a JSON file; every failure is a `DataError` naming the file (a syntax error
    also the line and the column)."""
    path = check_readable_file(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as err:  # an integer of more than 4,300 digits
        raise DataError(f"{path}: unreadable JSON ({err})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; any failure is a `DataError` naming the file (`what`
    names it when it is missing, as in `check_readable_file`)."""
    path = check_readable_file(path, what)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
