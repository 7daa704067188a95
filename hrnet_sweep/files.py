"""Files in and out, safely: every write is atomic and every read is checked first.

* `atomic_path` / `atomic_write_text` / `atomic_write_json`: write to a temporary file next
  to the target and rename it, so a crash or a full disk half way never leaves a
  half-written preset, CSV, manifest or checkpoint behind (the previous file stays).
* `check_writable`: before expensive work, that an output path can be written (not a
  folder, not under a file, not on a read-only filesystem).
* `check_readable_file`: before opening, that an input is a regular readable file (a
  FIFO would block the reader for ever; a folder or a device is no input either).
* `read_text` / `read_json`: UTF-8 text and JSON whose every failure is a `DataError`
  naming the file (and for JSON the line and column); `field` / `mapping`: the shape of
  what was read (a key of the wrong type is a `DataError` naming the file and the key).
* `read_tail`: the end of a file (logs), in bounded memory whatever its size.
* `child_path`: a name that becomes a path (run name, image name) stays inside its folder.
* `open_append` / `refuse_link`: files we append to or write in run, sweep and retrain
  folders never follow a link planted there (`atomic_path` replaces a link, never writes
  through it).
* `check_folder_writable`: before a run folder is made, that a folder key (output,
  cache) names a folder that can be created and written.
* `hold_lock`: one process at a time in a folder (`flock`, released when the holder
  dies, so a killed holder never blocks a resume); the next one is told who holds it.
* `backup_copy`: a dated copy of a user's file before it is rewritten without something
  it holds (comments).
* `image_size`: an image's (width, height) as it is shown (EXIF orientation applied, as
  the data pipeline applies it), from its header only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, BinaryIO

from .errors import BusyError, DataError

__all__ = [
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "backup_copy",
    "check_folder_writable",
    "check_readable_file",
    "check_writable",
    "child_path",
    "field",
    "hold_lock",
    "mapping",
    "open_append",
    "read_json",
    "read_tail",
    "read_text",
    "refuse_link",
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


# ----------------------------------------------------------------------------- shape of what was read


_KINDS = {
    str: "text",
    int: "an integer",
    float: "a finite number",
    bool: "true or false",
    dict: "an object",
    list: "a list",
}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if kind is int:
        return not isinstance(value, bool) and isinstance(value, int)
    return isinstance(value, kind)


def mapping(doc: Any, path: str | os.PathLike, key: str = "") -> dict:
    """`doc` when it is a JSON object (YAML mapping), else a `DataError` naming the file
    (and the key it was read from)."""
    if not isinstance(doc, dict):
        where = f" at {key}" if key else ""
        raise DataError(f"{path}: expected an object{where}, found {_found(doc)}")
    return doc


def field(
    doc: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    path: str | os.PathLike,
    *,
    optional: bool = False,
    prefix: str = "",
) -> Any:
    """`doc[key]` when it is of `kind` (`float`: a finite number, `int` never a bool);
    None when it is missing or null and `optional`; else a `DataError` naming the file and
    the key (`prefix` + key, e.g. `folds.0.best`)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    value = doc.get(key)
    if value is None and optional:
        return None
    if not any(_is(value, k) for k in kinds):
        want = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        missing = "missing" if key not in doc else f"{_found(value)}"
        raise DataError(f"{path}: key {prefix}{key} is {missing}; expected {want}")
    return value


def _found(value: Any) -> str:
    """A value read from a file, in words: `the number 3`, `text "x"`, `a list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {json.dumps(value)[:40]}"
    if isinstance(value, str):
        return f"text {json.dumps(value)[:60]}"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")


# ----------------------------------------------------------------------------- logs, names, links


def read_tail(path: str | os.PathLike, max_bytes: int = 64 * 1024) -> str:
    """The last `max_bytes` of a text file from a line start ('' when it is missing or
    no regular file): a log of any size is read in bounded memory, a FIFO never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return ""
        with os.fdopen(fd, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read(max_bytes)
    except OSError:
        return ""
    if size > max_bytes and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    return data.decode("utf-8", errors="replace")


def child_path(folder: str | os.PathLike, name: str, *, what: str = "name") -> Path:
    """`folder / name` for a name that becomes a path (a run name, an image name): a
    relative path without `..` that stays inside `folder` (also where a link inside it
    points elsewhere); else a `DataError` naming `what` and the name."""
    text = str(name)
    parts = PurePath(text).parts
    if not text.strip() or "\x00" in text:
        raise DataError(f"{what} {text!r}: not a usable name")
    if PurePath(text).is_absolute() or ".." in parts:
        raise DataError(f"{what} {text!r}: must stay inside {folder} (no absolute path, no '..')")
    path = Path(folder) / text
    base = Path(folder).resolve()
    if not path.resolve().is_relative_to(base):
        raise DataError(f"{what} {text!r}: {path} leads outside {folder} (through a link)")
    return path


def refuse_link(path: str | os.PathLike, what: str = "file") -> Path:
    """`path` unless it is a symbolic link (a link planted where we write would send our
    write elsewhere); a `DataError` naming it."""
    path = Path(path)
    if path.is_symlink():
        raise DataError(f"{path}: is a symbolic link (to {os.readlink(path)}); refusing to write the {what} through it")
    return path


def open_append(path: str | os.PathLike, what: str = "file") -> BinaryIO:
    """`path` opened for appending (binary), created when missing; a symbolic link, a
    FIFO or anything but a regular file is refused by name (`O_NOFOLLOW`: a link planted
    there is never followed, and a FIFO never blocks the writer)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if path.is_symlink():
            refuse_link(path, what)
        raise DataError(f"{path}: cannot append to the {what} ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{path}: the {what} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "ab")


def check_folder_writable(path: str | os.PathLike, *, what: str) -> Path:
    """Before a run folder is made: that the folder `path` (a folder key: output, cache)
    exists or can be created, and can be written; else a `DataError` naming `what` and
    the path. Nothing is created."""
    text = str(path)
    if not text.strip():
        raise DataError(f"{what}: the path is empty; name a folder")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{what}={text}: is a file, not a folder")
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"{what}={text}: cannot be created, {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"{what}={text}: cannot write there ({folder} is not writable)")
    return path


# ----------------------------------------------------------------------------- locks, backups


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the duration; when another process holds
    it, a `BusyError` naming `what` and the holder (pid, host, since, command). The lock
    dies with its holder: a killed holder never blocks the next one."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as err:
        refuse_link(path, "lock")
        raise DataError(f"{path}: cannot open the lock of {what} ({err.strerror or err})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
            try:
                h = json.loads(holder)
                who = f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')} ({h.get('command')})"
            except (ValueError, AttributeError):
                who = "another process"
            raise BusyError(f"{what} is in use by {who} (lock {path}); wait for it to end, or stop it") from None
        import sys

        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def backup_copy(path: str | os.PathLike) -> Path:
    """Copy `path` to `<name>.<YYYYmmdd-HHMMSS>.bak` next to it (a new name, never an older
    backup overwritten) and return the copy."""
    path = Path(path)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        backup = path.with_name(f"{path.name}.{stamp}{f'-{i}' if i else ''}.bak")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        return backup
    raise DataError(f"{path}: cannot make a backup copy next to it")  # pragma: no cover


_EXIF_ORIENTATION = 0x0112
_EXIF_SWAPS_SIDES = {5, 6, 7, 8}  # the rotations by 90 or 270 degrees


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) after EXIF orientation, from the header only; None when the file is
    no readable image (a folder or a FIFO is never opened)."""
    from PIL import Image

    try:
        with Image.open(check_readable_file(path, "image")) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _EXIF_SWAPS_SIDES:
                w, h = h, w
            return int(w), int(h)
    except (OSError, SyntaxError, ValueError, DataError):
        return None
