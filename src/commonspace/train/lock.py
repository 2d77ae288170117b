"""One writer per run folder: an exclusive lock on ``out_dir/.lock`` for as long as a run writes there.

The lock is a non-blocking ``flock`` on ``out_dir/.lock``, so the kernel drops it when the holder dies (no stale
locks after a kill). The file holds the holder's pid, host, start time and command line as JSON, which the
refusal names. Where ``fcntl`` is missing (Windows) the file is created exclusively instead, and a leftover one
is taken over only when its pid is known to be gone.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from commonspace.data.dataset import DataError
from commonspace.data.io import _pid_alive

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock"]

log = logging.getLogger("commonspace.train")

#: the lock file inside a run folder; hidden, and no reader (resume, load_model) looks at it
LOCK_NAME = ".lock"

# locks this process holds, by resolved folder: a nested RunLock on the same folder in the same thread is a
# no-op (the CLI or a caller may lock before the Trainer does), while another thread is refused like any writer
_held: dict[Path, tuple[int, int]] = {}  # folder -> (thread id, depth)
_held_guard = threading.Lock()


def _command_line() -> str:
    first = sys.argv[0] if sys.argv else ""
    if first in ("", "-c"):
        head = ["python", "-c", "..."]
    elif Path(first).name == "__main__.py":  # python -m package
        head = ["python", "-m", Path(first).parent.name]
    else:
        head = [Path(first).name]
    cmd = shlex.join([*head, *sys.argv[1:]])
    return cmd if len(cmd) <= 200 else cmd[:197] + "..."


def _holder_info() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": _command_line()}


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        info = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _busy(out_dir: Path, info: dict[str, Any], path: Path) -> DataError:
    if "pid" in info:
        who = (f"pid {info['pid']} on host {info.get('host', '?')} since {info.get('started', '?')} "
               f"({info.get('command', '?')})")
    else:  # the holder has locked but not yet written its details
        who = "another process"
    extra = "" if fcntl is not None else f" If no run is using it, delete {path}."
    return DataError(f"run folder {out_dir} is in use by {who}; wait for it to finish, stop it, or use another "
                     f"--out (API: out_dir).{extra}")


class RunLock:
    """``with RunLock(out_dir):`` holds ``out_dir/.lock`` exclusively, or raises a :class:`DataError` naming the holder.

    Creates ``out_dir`` if needed (and removes it on release if it is still empty). The lock file is removed on
    release; after a kill it stays behind, harmless, and the next run takes it over (the kernel lock died with the
    process).
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: int | None = None
        self._key: Path | None = None
        self._created = False

    # ---------------------------------------------------------------- public
    def acquire(self) -> RunLock:
        if self._key is not None:
            raise RuntimeError(f"this RunLock on {self.out_dir} is already held")
        try:
            self._created = not self.out_dir.exists()
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise DataError(f"run folder {self.out_dir} is a file, not a folder; use another --out") from exc
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise DataError(f"cannot create run folder {self.out_dir} ({why}); use another --out") from exc
        key = self.out_dir.resolve()
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                if held[0] != threading.get_ident():
                    raise _busy(self.out_dir, {**_holder_info(), "command": "another thread of this process"},
                                self.path)
                _held[key] = (held[0], held[1] + 1)
                self._key = key
                return self
            self._fd = self._lock_flock() if fcntl is not None else self._lock_exclusive()
            _held[key] = (threading.get_ident(), 1)
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            tid, depth = _held[self._key]
            if depth > 1:
                _held[self._key] = (tid, depth - 1)
            else:
                del _held[self._key]
                fd, self._fd = self._fd, None
                # unlinked while still locked: a process that opened this inode meanwhile sees it is gone and retries
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                if fd is not None:
                    os.close(fd)  # releases the flock
                if self._created:  # a run that failed before writing leaves no empty folder behind
                    try:
                        os.rmdir(self.out_dir)
                    except OSError:  # not empty (the usual case), or gone
                        pass
            self._key = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    # --------------------------------------------------------------- backends
    def _write_info(self, fd: int) -> None:
        data = json.dumps(_holder_info()).encode("utf-8") + b"\n"
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)

    def _lock_flock(self) -> int:
        assert fcntl is not None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's details stay
            except FileNotFoundError:  # a previous holder just removed the folder it had created, empty
                self.out_dir.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _parse(os.pread(fd, 65536, 0))
                os.close(fd)
                raise _busy(self.out_dir, info, self.path) from None
            except OSError as exc:  # a filesystem without locks (some network mounts): run, but say so
                log.warning("cannot lock run folder %s (%s): a second run on it would not be refused; use a "
                            "folder on a local disk to get the lock", self.out_dir, exc.strerror)
                self._write_info(fd)
                return fd
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._write_info(fd)
                return fd
            os.close(fd)  # the previous holder removed this file between our open and flock: take the new one

    def _lock_exclusive(self) -> int:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileNotFoundError:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                try:
                    info = _parse(self.path.read_bytes())
                except FileNotFoundError:
                    continue
                pid = info.get("pid")
                if (info.get("host") == socket.gethostname() and isinstance(pid, int)
                        and not _pid_alive(pid)):
                    self.path.unlink(missing_ok=True)  # left by a run that was killed
                    continue
                raise _busy(self.out_dir, info, self.path) from None
            self._write_info(fd)
            return fd
        raise _busy(self.out_dir, {}, self.path)
