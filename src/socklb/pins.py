"""Pin directories on bpffs: the layout, mounting bpffs, and the owner lock.

A balancer made with ``pin_dir`` keeps its state there::

    <pin_dir>/maps/<name>               every map (services, slots, backends, ...)
    <pin_dir>/links/<cgroup id>/<prog>   one bpf_link per program and attached cgroup

Directories are created 0700 and pins 0600: only root may read or change the
tables.  One process at a time owns a pin directory: it holds an exclusive
``flock`` on the directory, which the kernel drops when the process dies, so a
restarted controller can take over after a crash or a SIGKILL.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
from typing import List, Optional

from .errors import InvalidValueError, KernelError, PermissionDeniedError, PinLockedError

__all__ = ["BPF_FS_MAGIC", "prepare", "lock", "unlock", "remove", "is_bpffs", "holder_pid"]

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]


_libc = ctypes.CDLL(None, use_errno=True)


def _fs_type(path: str) -> int:
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise KernelError(f"statfs {path}", err)
    return int(buf.f_type) & 0xFFFFFFFF


def is_bpffs(path: str) -> bool:
    """Whether ``path`` (which must exist) is on a bpf filesystem."""
    return _fs_type(path) == BPF_FS_MAGIC


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _mount_bpffs(target: str) -> None:
    if _libc.mount(b"bpf", os.fsencode(target), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise KernelError(f"mounting bpffs at {target}", err)


def prepare(pin_dir: str) -> str:
    """Make ``pin_dir`` (absolute) ready: on bpffs (mounting bpffs at
    /sys/fs/bpf if nothing is mounted there), with maps/ and links/ below it,
    all 0700.  Returns the real path."""
    if not os.path.isabs(pin_dir):
        raise InvalidValueError("pin_dir", f"must be an absolute path, not {pin_dir!r}")
    anc = _existing_ancestor(pin_dir)
    try:
        on_bpffs = is_bpffs(anc)
    except KernelError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDeniedError(f"reading {anc}", e.errno) from None
        raise
    if not on_bpffs:
        if (pin_dir + "/").startswith(DEFAULT_BPFFS + "/") and anc in (DEFAULT_BPFFS, os.path.dirname(DEFAULT_BPFFS)):
            os.makedirs(DEFAULT_BPFFS, exist_ok=True)
            _mount_bpffs(DEFAULT_BPFFS)
        else:
            raise InvalidValueError(
                "pin_dir", f"{pin_dir} is not on a bpf filesystem (mount one, or use {DEFAULT_BPFFS})"
            )
    try:
        for d in (pin_dir, os.path.join(pin_dir, "maps"), os.path.join(pin_dir, "links")):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
        os.chmod(pin_dir, 0o700)
    except PermissionError as e:
        raise PermissionDeniedError(f"creating {pin_dir}", e.errno or errno.EACCES) from None
    return os.path.realpath(pin_dir)


def holder_pid(path: str) -> Optional[int]:
    """The pid holding a flock on ``path``, from /proc/locks, if any."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                    return int(parts[4])
    except OSError:
        pass
    return None


def lock(pin_dir: str) -> int:
    """Take the owner lock of ``pin_dir``; returns the fd that holds it."""
    try:
        fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError as e:
        raise PermissionDeniedError(f"opening {pin_dir}", e.errno or errno.EACCES) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PinLockedError(pin_dir, holder_pid(pin_dir)) from None
        raise KernelError(f"flock {pin_dir}", e.errno or errno.EIO) from None
    return fd


def unlock(fd: int) -> None:
    os.close(fd)  # closing the last fd of the open file drops the flock


def pinned_maps(pin_dir: str) -> List[str]:
    try:
        return sorted(os.listdir(os.path.join(pin_dir, "maps")))
    except FileNotFoundError:
        return []


def remove(pin_dir: str) -> None:
    """Remove every pin below ``pin_dir`` and the directory itself."""
    if os.path.isdir(pin_dir):
        if not is_bpffs(pin_dir):
            raise InvalidValueError("pin_dir", f"{pin_dir} is not on a bpf filesystem; not removing it")
        shutil.rmtree(pin_dir)
