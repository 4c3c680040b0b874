"""Crash-safe file writes: a file is written to a temporary sibling, fsynced, then renamed over
the target, so a reader sees either the old complete file or the new complete one, never a part.
Beside them: JSON and CSV reading, a check that an output folder can be written before anything is
(`check_writable_dir`), and an OSError worded as one sentence (`os_error_sentence`).

A process killed mid-write (SIGKILL, power loss) can leave only a temporary sibling named
``.<name>.<random>.tmp`` behind, never a damaged target; `remove_stale_temporaries` clears those.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from avae.errors import AvaeError, ConfigError

TMP_SUFFIX = ".tmp"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files get the mode a plain open() would give them (mkstemp alone makes them 0600).
DEFAULT_MODE = 0o666 & ~_current_umask()


def atomic_write_bytes(
    path: str | Path,
    data: bytes,
    *,
    mode: int | None = None,
    verify: Callable[[Path], None] | None = None,
) -> None:
    """Replace `path` with `data` atomically; on any failure the previous file is untouched.

    `mode` sets the permission bits (default: what the umask allows). `verify`, if given, is
    called with the fsynced temporary file before the rename and may raise to abort the write.
    Raises AvaeError (with the OSError as its cause) when the file cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    tmp: Path | None = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), DEFAULT_MODE if mode is None else mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp is not None:  # not renamed: remove the temporary, whatever went wrong
            with contextlib.suppress(OSError):
                tmp.unlink()
    fsync_dir(path.parent)


def write_error(path: Path, exc: OSError) -> AvaeError:
    """One sentence for a failed write: what happened, that nothing was lost, what to do."""
    return AvaeError(
        f"cannot write {path} ({exc.strerror or exc}); its previous version, if any, is intact: "
        f"free disk space or make {path.parent} writable, then try again"
    )


def fsync_dir(directory: str | Path) -> None:
    """Best-effort fsync of a folder so that a rename in it survives a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(directory: str | Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Delete temporaries of `names` in `directory` left by a writer that was killed mid-write.

    Only call this while no other process writes those files. Returns the paths removed.
    """
    removed = []
    for name in names:
        for tmp in Path(directory).glob(f".{name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str = "file", parse: Callable[[Any], Any] | None = None) -> Any:
    """The JSON value in `path`, or `parse(value)`: an error of `parse` (a bad or missing value in a
    hand-edited file) is raised again naming the file, as an unreadable file is."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AvaeError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AvaeError(f"{what} {path} is not readable JSON ({exc}); fix or delete it") from None
    if parse is None:
        return payload
    try:
        return parse(payload)
    except AvaeError as exc:  # the same error, its message naming the file
        fix = "; fix that value in the file" if isinstance(exc, ConfigError) else ""
        exc.args = (f"{what} {path}: {exc}{fix}",)
        raise
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise AvaeError(
            f"{what} {path} lacks or garbles an entry ({type(exc).__name__}: {exc}); restore that entry"
        ) from None


def check_writable_dir(path: str | Path, what: str = "--out", fix: str = "") -> None:
    """Refuse, before anything is written, a folder that cannot be created or written in: a file in
    its place or on its way, or a nearest existing folder this process may not write in (permissions,
    a read-only file system). Creates nothing. `fix` says what to do (default: choose another `what`)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = (
            "is a file, not a directory" if existing == path else f"cannot be made: {existing} is a file"
        )
        raise ConfigError(f"{what} {path} {problem}; {fix or f'choose another {what}'}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {path} cannot be written: {existing} is not writable for this user; "
            f"{fix or f'make it writable or choose another {what}'}"
        )


# What to do about an operating-system error no precise check caught (`os_error_sentence`).
OS_ERROR_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.EEXIST: "a file is in the way: choose another path or move that file",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
    errno.ENOSPC: "free disk space, then run the same command again (finished work is kept)",
    errno.EDQUOT: "free disk space, then run the same command again (finished work is kept)",
    errno.ENOENT: "check the path",
}


def os_error_sentence(exc: OSError) -> str:
    """One sentence for an OSError: the path, what the system said and what to do."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    fix = OS_ERROR_FIXES.get(exc.errno or 0, "check the path and its file system, then try again")
    return f"{paths or 'a file operation failed'}: {exc.strerror or exc}; {fix}"


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A CSV file with a header row, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, int | float | str]]:
    """Rows of a CSV file with a header, numbers parsed (int, then float); [] when it is absent."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    if (text and not text.endswith("\n")) or any(None in row or None in row.values() for row in rows):
        # write_csv replaces the file whole, so a cut or ragged row means it was truncated or edited
        raise AvaeError(
            f"{path} is damaged (a row is cut short or has more values than its header); restore it "
            "from a copy, or move it aside and start again"
        )
    return [{k: parse_number(v) for k, v in row.items()} for row in rows]


def parse_number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if needed, and left in place) for the `with` block:
    filelock's, an advisory flock on POSIX and a locked byte on Windows, held by this open of the
    file, so another process, or another file_lock in this one, waits for it.

    Yields True when the lock is held. With `blocking=False` it yields False at once when
    another process holds it, so the caller can refuse instead of waiting.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=False)
    try:
        lock.acquire(blocking=blocking)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
