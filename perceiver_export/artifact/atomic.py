"""Atomic writes: a reader (or a killed writer) never sees half a file or half an artifact.

Every file and directory they leave has the mode a plain `open(path, "w")` / `mkdir` would give under the
process umask (0644 / 0755 with umask 022): tempfile's mkstemp/mkdtemp make 0600 / 0700 whatever the umask,
which would leave an artifact exported by one user unreadable to the server running as another.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (/proc/self/status, Linux >= 4.7).

    Elsewhere os.umask(0) and back, under a lock, so two of our writers never see each other's 0; a thread of
    someone else's creating a file in that instant could still get umask 0, hence the /proc route first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """What open(path, "w") gives a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """What mkdir gives a new directory: 0o777 less the umask."""
    return 0o777 & ~current_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # before the rename: `path` never appears with mkstemp's 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def staging_dir_for(final: Path) -> Path:
    """A fresh empty directory beside `final`, on the same filesystem so it can be renamed into place, with the
    mode mkdir would give (mkdtemp's 0700 would become the published directory's)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-{os.getpid()}-", dir=final.parent))
    os.chmod(staging, dir_mode())
    return staging


def publish_dir(staging: Path, final: Path, previous: Path | None = None) -> None:
    """Replace directory `final` by `staging` so that `final` is always one whole artifact.

    On Linux the two directories are exchanged atomically; elsewhere the old one is moved
    aside first, leaving a moment where `final` does not exist (but never a mixed one).
    The replaced directory is deleted, or with `previous` renamed there whole (replacing an older one).
    Whatever wrote the files (safetensors writes 0600), they are published with the umask's modes.
    """
    _set_umask_modes(staging)
    for f in staging.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(staging)
    if final.exists():
        replaced = _swap_in(staging, final)
        if previous is not None:
            replaced = _swap_in(replaced, previous)  # now the older `previous`, if there was one
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.rename(staging, final)
    fsync_dir(final.parent)


def _set_umask_modes(root: Path) -> None:
    """Give every directory and file under `root` the mode mkdir / open(..., "w") would (execute bits kept)."""
    files, dirs, mask = file_mode(), dir_mode(), current_umask()
    os.chmod(root, dirs)
    for parent, subdirs, names in os.walk(root):
        for d in subdirs:
            if not os.path.islink(os.path.join(parent, d)):
                os.chmod(os.path.join(parent, d), dirs)
        for n in names:
            path = os.path.join(parent, n)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, files | (st.st_mode & 0o111 & ~mask))


def _swap_in(new: Path, final: Path) -> Path:
    """Put directory `new` at `final`; return where what was at `final` now is (`new`'s old path, possibly empty)."""
    if not final.exists():
        os.rename(new, final)
        return new
    if _exchange(new, final):
        return new
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    aside.rmdir()
    os.rename(final, aside)
    os.rename(new, final)
    return aside


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(final: Path) -> None:
    """Remove staging directories left by writers that were killed (their process is gone)."""
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{final.name}.staging-*"):
        pid = p.name.split(".staging-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
