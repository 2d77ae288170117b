"""Reading and writing data files: the ``.npz`` dataset schema, plain arrays and embeddings.

Dataset ``.npz`` schema (all keys but ``x_*`` optional; see docs/data.md):

- ``x_<modality>``: float (N, d) or (N, C, H, W) features, one array per modality
- ``modalities``: string array, the modality order (mask column order); defaults to the ``x_`` key order
- ``mask``: bool (N, M) presence, columns in ``modalities`` order; missing rows must be zero
- ``labels``: int (N,) class ids or 0/1 (N, C) multi-label indicators
- ``split_<name>``: int index arrays (``split_train``, ``split_val``, ``split_test``, ...)
- ``class_names``: string array; ``name``: 0-d string; ``meta``: 0-d JSON string
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from commonspace.data.dataset import DataError, LazyArray, MultimodalDataset

__all__ = [
    "DiskError",
    "Terminated",
    "atomic_write",
    "exit_on_signals",
    "load_array",
    "load_csv",
    "load_embeddings",
    "load_h5",
    "load_mat",
    "load_npz",
    "read_npz",
    "save_embeddings",
    "save_npz",
    "write_npz",
]

_ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".csv", ".csv.gz", ".tsv", ".txt", ".h5", ".hdf5")


# ------------------------------------------------------------------ helpers
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in sorted(_ARRAY_SUFFIXES, key=len, reverse=True):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found; check the path (relative paths resolve against {Path.cwd()})")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass the data file inside it")
    return p


def _missing_key(path: Path, key: str, available: list[str]) -> DataError:
    return DataError(f"{path}: no array named {key!r}; available keys: {available}. Pass one of them as key")


def _need_key(path: Path, available: list[str]) -> DataError:
    return DataError(f"{path}: holds several arrays {available}; pass key=... to choose one")


#: a temp file whose writer cannot be checked (a name without pid, another host's) is swept after this long
STALE_TMP_SECONDS = 3600.0


def _host_tag() -> str:
    # hashed: host names may hold dots, which would make the temp name ambiguous
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine; unknown counts as alive."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by another user
        return True
    return True


def _umask() -> int:
    # /proc reads it without the set-and-restore dance, during which other threads would create 0o666 files
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stale_siblings(path: Path, suffixes: str = "tmp", legacy: bool = True) -> list[os.DirEntry]:
    """Temp siblings of ``path`` left by killed writers; never one a live writer may still be filling.

    Ours are ``.NAME.PID-HOST.XXXXXXXX.<suffix>`` (``suffixes``: a regex alternative such as ``"tmp|old"``):
    stale when HOST is this machine and PID is gone, or, for other hosts' entries, after STALE_TMP_SECONDS.
    With ``legacy``, names without a pid (written before pids were recorded) are stale after that age too.
    """
    name = re.escape(path.name)
    own = re.compile(rf"\.{name}\.(\d+)-([0-9a-f]{{8}})\.[a-z0-9_]+\.(?:{suffixes})")
    old = re.compile(rf"\.{name}\.(?:[a-z0-9_]{{8}}\.tmp|tmp-[a-z0-9_]{{8}})") if legacy else None
    host, me, now = _host_tag(), os.getpid(), time.time()
    try:
        entries = [e for e in os.scandir(path.parent) if e.name.startswith(f".{path.name}.")]
    except OSError:
        return []
    out = []
    for e in entries:
        m = own.fullmatch(e.name)
        try:
            if m is not None and m.group(2) == host:
                stale = int(m.group(1)) != me and not _pid_alive(int(m.group(1)))
            elif m is not None or (old is not None and old.fullmatch(e.name)):
                stale = now - e.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
            else:
                continue
        except OSError:  # gone meanwhile: nothing to remove
            continue
        if stale:
            out.append(e)
    return out


def _sweep_stale_tmp(path: Path) -> None:
    """Remove the stale temp files of ``path`` (:func:`stale_siblings`)."""
    for e in stale_siblings(path):
        try:
            if e.is_file(follow_symlinks=False):
                os.unlink(e.path)
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], needed: int | None = None) -> Path:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename it over ``path``.

    ``os.replace`` within one directory is atomic, so readers see the old file or the complete new one,
    never a half-written file; on any error (and on SIGTERM/SIGHUP inside :func:`exit_on_signals`, which every
    CLI command uses) the temp file is removed and ``path`` is untouched. The temp file is
    ``.NAME.PID-HOST.XXXXXXXX.tmp``; ones left by killed writers (pid gone) are swept first. The new file's mode
    follows the umask (``0o666 & ~umask``), like any file the user creates. A symlink ``path`` keeps pointing at
    its target, which is what gets replaced. A full or read-only disk is a one-line :class:`DiskError` (``needed``:
    the bytes to write, when known, for its message).
    """
    path = resolve_link(Path(path).expanduser())
    if not path.parent.exists():
        raise DataError(f"{path}: folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a file path to write")
    _sweep_stale_tmp(path)
    tmp: str | None = None
    try:
        with _signals_deferred():  # a signal inside mkstemp would leave its file without a name to remove
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_host_tag()}.", suffix=".tmp",
                                       dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise_if_disk_error(exc, path, needed)  # after the unlink: the free space it shows is the user's
        raise
    return path


_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP back for a few lines; they are delivered (and raise) right after."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: nothing to block with
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _make_temp_dir(parent: Path, prefix: str, suffix: str = "") -> Path:
    """``tempfile.mkdtemp`` safe from Ctrl-C, SIGTERM and SIGHUP: a signal inside mkdtemp, or one held back until
    it returns, would leave a folder without a name to remove. Held signals are delivered before this returns,
    and the folder is removed if they raise."""
    path: Path | None = None
    try:
        with _signals_deferred():
            path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return path


# ------------------------------------------------------------------ disk faults
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class DiskError(DataError, OSError):
    """A write the file system refused (full, read-only, not permitted), as one line naming the folder and the fix.

    A :class:`DataError` (the CLI prints it as one line, exit 2) and an ``OSError`` (with ``errno``), so callers
    that catch either still do.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    m = re.search(r"\(os error (\d+)\)", str(exc))  # safetensors' Rust I/O errors carry the errno only as text
    return int(m.group(1)) if m else None


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``folder`` (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 100e6 else f"{n / 1e6:.0f} MB"


def _nearest_dir(path: Path) -> Path:
    p = path
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def disk_error(exc: BaseException, target: str | os.PathLike, needed: int | None = None,
               option: str = "--out", where: Path | None = None, at_least: bool = False) -> DiskError | None:
    """``exc`` as a one-line :class:`DiskError` when it is a full or read-only disk (or no permission), else None.

    ``needed`` is the bytes the write needs (``at_least``: more than that), shown with what is free; ``option``
    is the CLI option to change.
    Build it after removing what the write left, so the free space shown is what the user really has.
    """
    code = _errno_of(exc)
    if code not in _NO_SPACE + _NOT_WRITABLE:
        return None
    target = Path(target)
    where = where or _nearest_dir(target.parent)
    if code in _NO_SPACE:
        free = free_bytes(where)
        have = "" if free is None else f"{_mb(free)} free"
        if needed:
            need = f"needs {'over ' if at_least else ''}{_mb(needed)}" + (f", {have}" if have else "")
        else:
            need = f"{have}, not enough" if have else "the disk is full"
        msg = f"{target}: no space left on {where}: {need}; free space or choose another {option}"
    else:
        why = "read-only file system" if code == errno.EROFS else "permission denied"
        msg = f"{target}: cannot write to {where} ({why}); choose another {option} on a disk you can write to"
    return DiskError(msg, code)


def raise_if_disk_error(exc: BaseException, target: str | os.PathLike, needed: int | None = None,
                        **kw: Any) -> None:
    """Raise ``exc`` as its one-line :class:`DiskError` (:func:`disk_error`) when it is a full or read-only disk;
    else return, for the caller to re-raise or reword it. Call it after removing what the write left."""
    err = disk_error(exc, target, needed, **kw)
    if err is not None:
        raise err from exc


def check_writable(folder: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, as one :class:`DiskError`, a folder (or, when it does not exist yet, its nearest existing parent)
    that cannot take a small file: read-only, not permitted or completely full. Leaves nothing behind."""
    folder = Path(folder).expanduser()
    where = _nearest_dir(folder)
    tmp: str | None = None
    try:
        with _signals_deferred():  # a signal between mkstemp and unlink would leave the probe behind
            fd, tmp = tempfile.mkstemp(prefix=".commonspace-probe-", dir=where)
            try:
                os.write(fd, b"\0" * 4096)  # one block: a full disk refuses it, an empty file would not
            finally:
                os.close(fd)
                os.unlink(tmp)
    except OSError as exc:
        raise_if_disk_error(exc, folder, option=option, where=where)
        raise


def reserve(path: str | os.PathLike) -> None:
    """Allocate every block of the (sparse) file ``path`` now, before it is filled through a memory map.

    A store through a map into a block the full disk cannot provide kills the process with SIGBUS, without a
    message or cleanup; reserved first, a full disk is an ``OSError`` (ENOSPC) here instead.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if not size:
            return
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        if os.name == "nt":  # NTFS allocates the blocks when the file is extended: nothing to do
            return
        block = b"\0" * (1 << 20)  # no fallocate (macOS, or the file system has none): write the zeros through
        for start in range(0, size, len(block)):
            os.pwrite(fd, block[: min(len(block), size - start)], start)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ crash-safe replacement
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange_fn() -> Any:
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2 = fn
            except (OSError, AttributeError):
                pass
    return _renameat2 or None


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the platform, kernel or file system cannot (then nothing was changed).
    """
    fn = _exchange_fn()
    if fn is None:
        return False
    import ctypes

    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, out: Path, old_name: Callable[[], Path]) -> None:
    """Make the complete folder ``new`` (a hidden sibling) the folder ``out``, removing the previous ``out``.

    With ``renameat2(RENAME_EXCHANGE)`` the two folders swap in one step, so ``out`` always exists. Elsewhere
    the old folder steps aside under ``old_name()`` (``.OUT.PID-HOST.XXXXXXXX.old``) first; a kill between the
    two renames leaves ``out`` missing, and :func:`recover_replaced` (which readers and sweeps call) puts the
    old folder back.
    """
    if not os.path.lexists(out):
        os.replace(new, out)  # nothing to replace: atomic
        return
    with _signals_deferred():  # Ctrl-C or SIGTERM between the renames would leave out missing
        if exchange(new, out):
            old = new  # the previous folder now sits under the temp name, swept as one if we die here
        else:
            old = old_name()
            os.rmdir(old)
            os.rename(out, old)
            try:
                os.rename(new, out)
            except BaseException:
                os.rename(old, out)
                raise
    shutil.rmtree(old, ignore_errors=True)


def recover_replaced(path: str | os.PathLike) -> bool:
    """Undo a replacement a killed writer left half done: ``path`` missing, its previous copy hidden as ``.old``.

    The newest such copy (of a writer that is gone) is renamed back to ``path``; True when that happened.
    """
    path = Path(path).expanduser()
    if os.path.lexists(path):
        return False
    olds = stale_siblings(path, "old", legacy=False)
    for e in sorted(olds, key=_ctime, reverse=True):
        try:
            os.rename(e.path, path)
            return True
        except OSError:  # gone meanwhile (another reader restored it), or not ours to move
            if os.path.lexists(path):
                return False
    return False


def _ctime(e: os.DirEntry) -> float:
    try:
        return e.stat(follow_symlinks=False).st_ctime  # a rename sets it: the latest step-aside wins
    except OSError:
        return 0.0


def sweep_replaced(path: str | os.PathLike) -> None:
    """Remove the temp and ``.old`` siblings of ``path`` left by killed writers; never the last copy.

    A stale ``.old`` is first put back when ``path`` is missing (:func:`recover_replaced`); any other is removed
    only while ``path`` exists. Symlinks among them are unlinked, never followed.
    """
    path = Path(path).expanduser()
    recover_replaced(path)
    for e in stale_siblings(path, "tmp|old", legacy=False):
        if e.name.endswith(".old") and not os.path.lexists(path):
            continue
        try:
            if e.is_symlink():
                os.unlink(e.path)
            elif e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
        except OSError:
            pass


def resolve_link(path: Path) -> Path:
    """The target of ``path`` when it is a symlink (so a replacement writes there and the link stays valid)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


class Terminated(SystemExit):
    """SIGTERM or SIGHUP turned into an exception by :func:`exit_on_signals`; exits with ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread instead of killing Python.

    Python's default for them ends the process without running ``finally`` blocks, which is how temp files
    leaked; as an exception they unwind like Ctrl-C. A signal with a handler other than the default (ignored, as
    under ``nohup``, or the application's own) is left alone; a second one of the same kind kills at once.
    Outside the main thread (where handlers cannot be set) this does nothing.
    """
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)  # if cleanup hangs, a second signal still ends the process
        raise Terminated(signum)

    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)  # no SIGHUP on Windows
            if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
                previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def write_npz(fh: IO[bytes], arrays: Mapping[str, np.ndarray], compress: bool = True) -> None:
    """``np.savez`` with fixed zip timestamps, so the same arrays always give the same bytes.

    numpy stamps every member with the current time, which makes two identical runs differ on disk.
    """
    import zipfile

    from numpy.lib import format as npformat

    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(fh, mode="w", compression=method, allowZip64=True) as zf:
        for key, val in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                npformat.write_array(member, np.asanyarray(val), allow_pickle=False)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------- dataset npz
def save_npz(dataset: MultimodalDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` in the documented ``.npz`` schema (compressed, atomic)."""
    path = Path(path).expanduser()
    if _suffix(path) != ".npz":
        raise DataError(f"{path}: save_npz writes .npz files; give the path a .npz suffix")
    arrays: dict[str, np.ndarray] = {f"x_{m}": _np(x) for m, x in dataset.features.items()}
    arrays["modalities"] = np.array(dataset.modalities, dtype=str)
    arrays["mask"] = _np(dataset.mask).astype(bool)
    if dataset.labels is not None:
        y = _np(dataset.labels)
        arrays["labels"] = y.astype(bool) if y.ndim == 2 else y.astype(np.int64)  # bool: multi-label at any C
    for s, idx in dataset.splits.items():
        arrays[f"split_{s}"] = _np(idx).astype(np.int64)
    if dataset.class_names is not None:
        arrays["class_names"] = np.array(list(dataset.class_names), dtype=str)
    arrays["name"] = np.array(dataset.name, dtype=str)
    if dataset.meta:
        arrays["meta"] = np.array(json.dumps(dataset.meta, default=str), dtype=str)
    return atomic_write(path, lambda fh: write_npz(fh, arrays))


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members, an empty zip


def read_npz(path: str | os.PathLike, what: str = ".npz file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read fully; a damaged or foreign file is one :class:`DataError`.

    numpy would unpickle a file that is not a zip (refused here, as allow_pickle is off, with a misleading
    message) and raises ``BadZipFile``, ``zlib.error`` or ``EOFError`` on a truncated one.
    """
    import zipfile
    import zlib

    p = _existing(path)
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head not in _ZIP_MAGIC:
        kind = "empty" if not head else ("a .npy array" if head.startswith(b"\x93NUM") else "not a zip archive")
        raise DataError(f"{p}: not a valid {what} ({kind}); an .npz is a zip of .npy arrays, written by "
                        "numpy.savez or commonspace; re-create the file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays need pickle, which we never enable (untrusted files)
            raise DataError(f"{p}: holds object arrays, which need pickle (refused for safety); save strings "
                            "as numpy str arrays and numbers as numeric arrays") from exc
        raise DataError(f"{p}: damaged {what} ({exc}); re-create or re-download it") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{p}: damaged or truncated {what} ({type(exc).__name__}: {exc}); re-create or "
                        "re-download it") from exc


def load_npz(path: str | os.PathLike) -> MultimodalDataset:
    """Read a dataset written in the ``.npz`` schema (see module docstring); validates on load."""
    p = _existing(path)
    if _suffix(p) != ".npz":
        raise DataError(f"{p}: load_npz reads .npz files; use load_array or load_spec for other formats")
    data = read_npz(p)
    feats = {k[2:]: v for k, v in data.items() if k.startswith("x_")}
    if not feats:
        raise DataError(
            f"{p}: no feature arrays; name each modality's array x_<modality> (found keys {sorted(data)})"
        )
    if "modalities" in data:
        order = [str(m) for m in np.atleast_1d(data["modalities"])]
        if sorted(order) != sorted(feats):
            raise DataError(
                f"{p}: 'modalities' lists {order} but the x_ arrays are {sorted(feats)}; make them agree"
            )
        feats = {m: feats[m] for m in order}
    elif "mask" in data and len(feats) > 1:
        raise DataError(f"{p}: has a mask but no 'modalities' array giving its column order; add one")
    splits = {k[6:]: v for k, v in data.items() if k.startswith("split_")}
    class_names = [str(c) for c in data["class_names"]] if "class_names" in data else None
    name = str(data["name"]) if "name" in data else p.stem
    meta: dict = {}
    if "meta" in data:
        try:
            meta = json.loads(str(data["meta"]))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: 'meta' is not valid JSON ({exc})") from exc
    meta.setdefault("file", str(p))
    try:
        return MultimodalDataset(feats, data.get("mask"), data.get("labels"), splits, name, class_names, meta)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from exc


def _h5_text(f: Any, key: str) -> list[str] | None:
    """A string (or string array) stored as a dataset or a root attribute, decoded; None when absent."""
    if key in f:
        raw = f[key][()]
    elif key in f.attrs:
        raw = f.attrs[key]
    else:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.atleast_1d(np.asarray(raw, dtype=object))]


def load_h5(path: str | os.PathLike, lazy: bool = True) -> MultimodalDataset:
    """Read a dataset stored in HDF5 with the ``.npz`` schema's names (``x_<modality>``, ``mask``, ``labels``,
    ``split_<name>``, ``modalities``, ``class_names``, ``name``, ``meta``; the last four may be root attributes).

    With ``lazy`` the features stay in the file and are read per batch (sorted row reads, float32 out); their
    values are checked in chunks, so no modality is ever loaded whole. The file stays open while the dataset
    is used.
    """
    import h5py

    p = _existing(path)
    if not h5py.is_hdf5(p):
        raise DataError(f"{p}: not an HDF5 file (damaged, or another format); re-create it, or give a .npz file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise DataError(f"{p}: cannot open the HDF5 file ({exc}); re-create or re-download it") from exc
    keys = [k for k in f.keys() if isinstance(f[k], h5py.Dataset)]
    feats: dict[str, Any] = {k[2:]: f[k] for k in keys if k.startswith("x_")}
    if not feats:
        raise DataError(f"{p}: no feature datasets; name each modality's dataset x_<modality> (found {sorted(keys)}), "
                        "or map the file's arrays to modalities in a .toml spec (file = ..., key = ...)")
    order = _h5_text(f, "modalities")
    if order is not None:
        if sorted(order) != sorted(feats):
            raise DataError(f"{p}: 'modalities' lists {order} but the x_ datasets are {sorted(feats)}; make them "
                            "agree")
        feats = {m: feats[m] for m in order}
    elif "mask" in f and len(feats) > 1:
        raise DataError(f"{p}: has a mask but no 'modalities' giving its column order; add one")
    for m, d in feats.items():
        if d.dtype.kind not in "fiub":
            raise DataError(f"{p}: x_{m} has dtype {d.dtype}; expected numbers")
    feats = {m: LazyArray(d, label=f"{p}:{d.name}") if lazy else np.asarray(d[()]) for m, d in feats.items()}
    splits = {k[6:]: np.asarray(f[k][()]) for k in keys if k.startswith("split_")}
    name = (_h5_text(f, "name") or [p.stem])[0]
    meta: dict = {}
    raw_meta = _h5_text(f, "meta")
    if raw_meta is not None:
        try:
            meta = json.loads(raw_meta[0])
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: 'meta' is not valid JSON ({exc})") from exc
    meta.setdefault("file", str(p))
    mask = np.asarray(f["mask"][()]) if "mask" in keys else None
    labels = np.asarray(f["labels"][()]) if "labels" in keys else None
    try:
        return MultimodalDataset(feats, mask, labels, splits, name, _h5_text(f, "class_names"), meta)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from exc


# ------------------------------------------------------------------- arrays
def _pick_key(p: Path, key: str | None, names: list[str]) -> str:
    """The requested variable, or the only one in the file; otherwise an error listing them."""
    if key is None:
        if len(names) != 1:
            raise _need_key(p, names)
        return names[0]
    if key not in names:
        raise _missing_key(p, key, names)
    return key


def load_mat(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """One variable of a MATLAB file, v4-v7 (scipy) or v7.3 (HDF5, transposed back to MATLAB's shape)."""
    p = _existing(path)
    import h5py

    if h5py.is_hdf5(p):
        with h5py.File(p, "r") as f:
            names = [k for k in f.keys() if not k.startswith("#")]  # '#refs#' holds cell-array internals
            key = _pick_key(p, key, names)
            obj = f[key]
            if not isinstance(obj, h5py.Dataset):
                raise DataError(f"{p}: {key!r} is a MATLAB struct or group; save it as a plain numeric array")
            arr = obj[()]
            if arr.dtype.kind == "O":
                raise DataError(f"{p}: {key!r} is a cell array; save it as a plain numeric array")
            # MATLAB stores column-major; HDF5 sees the reversed shape
            return np.ascontiguousarray(np.asarray(arr).T)
    import scipy.io

    try:
        mat = scipy.io.loadmat(p)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"{p}: not a readable MATLAB file ({exc})") from exc
    names = [k for k in mat if not k.startswith("__")]
    key = _pick_key(p, key, names)
    arr = np.asarray(mat[key])
    if arr.dtype.kind == "O":
        raise DataError(f"{p}: {key!r} is a cell array or struct; save it as a plain numeric array")
    return arr


def _header_row(first: str, delimiter: str | None) -> bool:
    for field in first.strip().split(delimiter):
        try:
            float(field)
        except ValueError:
            return True
    return False


def load_csv(
    path: str | os.PathLike,
    header: bool | None = None,
    label_column: int | str | None = None,
    delimiter: str | None = ",",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric delimited text as ``(X, y)``; ``y`` is the ``label_column`` (index or header name) or None.

    ``header=None`` detects a header row by whether the first row parses as numbers; pass ``True`` for a
    numeric header (e.g. column numbers). ``delimiter=None`` splits on whitespace. ``.gz`` is read directly.
    """
    p = _existing(path)
    import gzip

    opener = gzip.open if p.name.lower().endswith(".gz") else open
    with opener(p, "rt") as fh:
        first = fh.readline()
    if not first.strip():
        raise DataError(f"{p}: the file is empty")
    if header is None:
        header = _header_row(first, delimiter)
    names = [c.strip().strip('"') for c in first.strip().split(delimiter)] if header else None
    try:
        a = np.loadtxt(p, delimiter=delimiter, skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise DataError(
            f"{p}: not purely numeric text ({exc}); remove text columns, or pass header=True if the first "
            "row is a header"
        ) from exc
    if a.shape[0] == 0:
        raise DataError(f"{p}: has a header but no data rows")
    y = None
    if label_column is not None:
        if isinstance(label_column, str):
            if names is None or label_column not in names:
                raise DataError(
                    f"{p}: no column named {label_column!r}; header columns: {names}. Pass an index instead"
                )
            col = names.index(label_column)
        else:
            col = int(label_column)
            if not -a.shape[1] <= col < a.shape[1]:
                raise DataError(f"{p}: label column {col} out of range for {a.shape[1]} columns")
            col %= a.shape[1]
        y = a[:, col]
        if not np.all(y == np.round(y)):
            raise DataError(f"{p}: label column {label_column!r} holds non-integer values")
        y = y.astype(np.int64)
        a = np.delete(a, col, axis=1)
    return a, y


def load_array(path: str | os.PathLike, key: str | None = None, **kw: Any) -> np.ndarray:
    """One numeric array from ``.npy``, ``.npz``, ``.mat`` (v5 or v7.3), ``.h5``, ``.csv``/``.tsv``/``.txt``.

    ``key`` picks the array in multi-array files (required when there are several). Extra keywords go to
    :func:`load_csv` for text files (``header``, ``delimiter``).
    """
    p = _existing(path)
    suf = _suffix(p)
    if suf == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{p}: not a numeric .npy file ({exc})") from exc
    if suf == ".npz":
        arrays = read_npz(p)
        return arrays[_pick_key(p, key, list(arrays))]
    if suf == ".mat":
        return load_mat(p, key)
    if suf in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            names: list[str] = []
            f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
            key = _pick_key(p, key, names)
            return np.asarray(f[key][()])
    if suf in (".csv", ".csv.gz", ".tsv", ".txt"):
        if key is not None:
            raise DataError(f"{p}: text files hold one table; drop key={key!r}")
        kw.setdefault("delimiter", {".tsv": "\t", ".txt": None}.get(suf, ","))
        return load_csv(p, **kw)[0]
    raise DataError(f"{p}: unsupported file type {suf!r}; use one of {', '.join(_ARRAY_SUFFIXES)}")


# --------------------------------------------------------------- embeddings
def save_embeddings(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray | torch.Tensor],
    meta: dict | None = None,
) -> Path:
    """Write named arrays (e.g. ``{"image": Z_img, "text": Z_txt, "labels": y}``) atomically.

    ``.npz``: one array per name plus a ``__meta__`` JSON string. ``.parquet`` (needs pyarrow): one
    column per name, 2-D arrays as fixed-size list columns, all with the same number of rows; ``meta``
    goes into the schema metadata as JSON. A path without a suffix: an embeddings folder (one ``.npy`` per
    array, row-aligned; :mod:`commonspace.data.embedfiles`, which also writes any of the three chunk by chunk).
    """
    from commonspace.data.embedfiles import embedding_kind, write_embeddings

    path = Path(path).expanduser()
    if not arrays:
        raise DataError("save_embeddings needs at least one array")
    if embedding_kind(path) == "folder":
        rows = {int(np.shape(v)[0]) if np.ndim(v) else 1 for v in arrays.values()}
        if len(rows) != 1:
            raise DataError(f"{path}: an embeddings folder needs arrays with one row count, got {sorted(rows)}")
        return write_embeddings(path, [arrays], rows.pop(), meta)
    data = {str(k): _np(v) for k, v in arrays.items()}
    for k, v in data.items():
        if v.dtype.kind == "O":
            raise DataError(f"array {k!r} has dtype object; pass numeric arrays")
    meta_json = json.dumps(meta or {}, default=str)
    suf = _suffix(path)
    if suf == ".npz":
        if "__meta__" in data:
            raise DataError("'__meta__' is reserved for the metadata; rename that array")
        data["__meta__"] = np.array(meta_json, dtype=str)
        return atomic_write(path, lambda fh: write_npz(fh, data))
    if suf == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(
                f"{path}: writing .parquet needs pyarrow; run `pip install pyarrow` (or "
                "`pip install commonspace[parquet]`), or save to .npz instead"
            ) from exc
        rows = {v.shape[0] if v.ndim else 1 for v in data.values()}
        if len(rows) != 1:
            raise DataError(f"{path}: parquet columns need equal row counts, got "
                            f"{ {k: v.shape for k, v in data.items()} }; save to .npz instead")
        cols = {}
        for k, v in data.items():
            if v.ndim == 1:
                cols[k] = pa.array(v)
            elif v.ndim == 2:
                cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            else:
                raise DataError(f"array {k!r} has shape {v.shape}; parquet takes 1-D or 2-D arrays")
        table = pa.table(cols).replace_schema_metadata({"commonspace": meta_json})
        return atomic_write(path, lambda fh: pq.write_table(table, fh))
    raise DataError(f"{path}: embeddings are saved as .npz or .parquet; change the suffix")


def load_embeddings(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """Read what :func:`save_embeddings` (or ``commonspace embed``) wrote: ``(arrays, meta)``.

    An embeddings folder's arrays are read-only memory maps (checksums verified in one chunked pass)."""
    recover_replaced(path)  # a writer killed mid-replacement hid the folder as .old: put it back
    if Path(path).expanduser().is_dir():
        from commonspace.data.embedfiles import read_embeddings_folder

        return read_embeddings_folder(path)
    p = _existing(path)
    suf = _suffix(p)
    if suf == ".npz":
        arrays = read_npz(p, "embeddings file")
        try:
            meta = json.loads(str(arrays.pop("__meta__"))) if "__meta__" in arrays else {}
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: its '__meta__' entry is not valid JSON ({exc}); the file is damaged") from exc
        return arrays, meta
    if suf == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DataError(f"{p}: reading .parquet needs pyarrow; run `pip install pyarrow`") from exc
        import pyarrow as pa

        table = pq.read_table(p)
        out = {}
        for name in table.column_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(col.type):
                out[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        raw = (table.schema.metadata or {}).get(b"commonspace", b"{}")
        return out, json.loads(raw)
    raise DataError(f"{p}: embeddings files are .npz, .parquet or an embeddings folder")
