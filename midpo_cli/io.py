"""Atomic file and folder writes (a reader sees the old artifact or the finished new one, never half), and
the one JSON and JSON-lines reader, whose errors name the file and the line (or, for records a reader can do
without, `try_read_json`)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError


def umask() -> int:
    """The process's file-creation mask, read without changing it where Linux allows (os.umask sets it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as fh:
            return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` beside `path`, then rename; the file gets the mode `open()` would give (0666 less the umask):
    mkstemp's private 0600 would leave run artifacts unreadable to a colleague or a serving container."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp folder beside `path`; on success it replaces `path` in one rename.

    Everything in it gets the modes `cp` would give under the umask (folders 0777, files 0666, executables
    0777, each less the umask): mkdtemp makes the folder 0700, and some writers (safetensors' save_file)
    make their files 0600 whatever the umask, which would hide a model from a colleague or a server."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        follow_umask(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def follow_umask(folder: Path) -> None:
    """Give `folder` and everything under it the umask's modes (links are left alone)."""
    mask = umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                executable = os.stat(file).st_mode & 0o100
                os.chmod(file, (0o777 if executable else 0o666) & ~mask)
        dirs[:] = [name for name in dirs if not os.path.islink(os.path.join(root, name))]


def output_problem(path: Path, *, folder: bool = False) -> str | None:
    """Why `path` cannot be written as an output file (or, with `folder`, an output folder), or None; checked
    before any work, so a bad path costs nothing. Refused: a FIFO, socket or device (reading a FIFO to resume it
    blocked forever), a folder where a file goes or a file where a folder goes, a dangling symbolic link (a write
    would create its target, somewhere else), and a path under a regular file (it failed after the work, with
    FileExistsError or NotADirectoryError)."""
    if path.is_symlink() and not path.exists():
        return f"is a dangling symbolic link (to {os.readlink(path)})"
    if path.exists():
        mode = path.stat().st_mode
        if folder and not stat.S_ISDIR(mode):
            return "is an existing file; give a folder"
        if not folder and stat.S_ISDIR(mode):
            return "is a folder; give a file name"
        if not folder and not stat.S_ISREG(mode):
            return "is not a regular file (a FIFO, socket or device); give a file name"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return None if parent.is_dir() else f"{parent} is a file, so no file or folder can be created under it"


def check_output(path: str | os.PathLike[str], flag: str, *, folder: bool = False) -> Path:
    """`path`, or an InputError `FLAG PATH: why` (output_problem)."""
    path = Path(path)
    problem = output_problem(path, folder=folder)
    if problem:
        raise InputError(f"{flag} {path}: {problem}")
    return path


LOW_SPACE = 64 << 20  # bytes left on a device that cannot take a checkpoint's next file: "full"


def as_disk_full(exc: BaseException, path: str | os.PathLike[str]) -> BaseException:
    """torch's zip writer (torch.save, DeepSpeed's checkpoints) reports a full disk as RuntimeError("... file write
    failed"), not OSError(ENOSPC), so it exited 1 as a crash; when the device under `path` has (almost) no space
    left, this is the OSError(ENOSPC) the CLI says in one line (exit 2). Anything else comes back as it was."""
    if not isinstance(exc, RuntimeError) or "write failed" not in str(exc):
        return exc
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return exc
    return OSError(errno.ENOSPC, "No space left on device", str(path)) if free < LOW_SPACE else exc


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; a syntax error becomes an InputError naming the file and line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None


def try_read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file, or None when it is missing, unreadable or not JSON: for records and caches a reader can
    do without (a manifest, a summary to quote, a cache to rebuild); `read_json` for input the user must fix."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: invalid JSON and undecodable bytes
        return None


class JsonlError(InputError):
    """A line of a JSON-lines file that is not a JSON object; `line` is its 1-based number."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def jsonl_rows(lines: Iterable[str], source: str, *, unit: str = "line", cut_off: str | None = None,
               start: int = 1) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(number, row) for each line of a JSON-lines file; row is None for a blank line (callers count them).

    The one JSONL parser of the package: a line that is not a JSON object raises JsonlError
    `SOURCE: UNIT N: invalid JSON (…)` or `… expected a JSON object, got T`. With `cut_off`, a last line
    without its newline that does not parse is reported as cut off (an interrupted writer), with that hint.
    """
    for number, line in enumerate(lines, start=start):
        if not line.strip():
            yield number, None
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if cut_off is not None and not line.endswith("\n"):
                raise JsonlError(f"{source}: {unit} {number} is cut off; {cut_off}", number) from None
            raise JsonlError(f"{source}: {unit} {number}: invalid JSON ({exc.msg})", number) from None
        if not isinstance(row, dict):
            raise JsonlError(f"{source}: {unit} {number}: expected a JSON object, got {type(row).__name__}", number)
        yield number, row


def read_jsonl(path: str | os.PathLike[str], *, source: str | None = None, unit: str = "line",
               cut_off: str | None = None) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file, blank lines skipped (jsonl_rows)."""
    with open(path, encoding="utf-8") as fh:
        return [row for _, row in jsonl_rows(fh, source or str(path), unit=unit, cut_off=cut_off) if row is not None]


def write_jsonl(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
