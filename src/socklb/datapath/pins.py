"""Pin directories on bpffs: the layout, what socklb may create and remove,
mounting bpffs, and the owner lock.

A balancer made with ``pin_dir`` keeps its state there::

    <pin_dir>/maps/<name>               every map (MAP_NAMES: services, slots, ..., meta)
    <pin_dir>/links/<cgroup id>/<prog>   one bpf_link per program (PROG_NAMES) and attached cgroup

socklb touches only its own entries, and these rules say what they are:

* **Removal.**  :func:`remove` (and so ``Balancer.destroy()``) unpins exactly
  ``maps/<one of MAP_NAMES>`` and ``links/<decimal cgroup id>/<one of
  PROG_NAMES>``, then removes ``links/<id>/``, ``links/``, ``maps/`` and
  ``pin_dir`` itself if that left them empty.  Anything else found there -
  another program's pins or directories, even one that carries a socklb name
  but is a directory or a symlink - is left alone, and so is every directory
  that still holds something.  ``pin_dir`` is removed when it is empty,
  whether socklb created it or it was given empty (nothing records who created
  a directory across processes, and an empty directory holds no data); parents
  of ``pin_dir`` are never removed.  :func:`remove` refuses while another
  process owns the directory (:class:`~socklb.errors.PinLockedError`).
* **Where.**  ``pin_dir`` may not be the root of a bpffs (a mount point, where
  other programs pin), nor lie inside another balancer's pin tree (below a
  directory that has socklb's meta map pinned as ``maps/meta``).  Both raise
  :class:`~socklb.errors.InvalidValueError` before anything is created.
* **What was there.**  An existing ``pin_dir`` must be empty or hold a socklb
  layout: socklb's meta map as ``maps/meta`` (a balancer's pins, of any
  layout version; foreign entries added beside them are tolerated and left
  alone), or nothing but socklb's own entries (what a balancer killed before
  it wrote its meta map leaves).  A non-empty directory holding anything else
  and no socklb meta map is refused, not shared: socklb could not tell its own
  entries from another program's there, and :func:`remove` refuses it too.
* **Modes.**  Directories socklb creates are 0700 whatever the umask, pins
  0600; a directory that already exists keeps its mode (the bpffs root, often
  1777, or a directory the caller made).

Only root may read or change the tables.  One process at a time owns a pin
directory: it holds an exclusive ``flock`` on the directory, which the kernel
drops when the process dies, so a restarted controller can take over after a
crash or a SIGKILL.

Example (removing what a balancer of another layout version left; only
socklb's entries go)::

    >>> from socklb.datapath import pins
    >>> pins.remove("/sys/fs/bpf/my-lb")          # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
from typing import List, Optional, Tuple

from socklb._native import ffi, lib
from socklb.datapath.live import GROUP_PROGRAMS, MAPS, PROGRAMS
from socklb.errors import InvalidValueError, KernelError, PermissionDeniedError, PinLockedError

__all__ = [
    "BPF_FS_MAGIC",
    "MAP_NAMES",
    "PROG_NAMES",
    "prepare",
    "lock",
    "unlock",
    "remove",
    "remove_links",
    "make_dir",
    "is_bpffs",
    "holder_pid",
]

BPF_FS_MAGIC = 0xCAFE4A11
DEFAULT_BPFFS = "/sys/fs/bpf"

# What socklb pins: maps/<one of its maps> and links/<cgroup id>/<one of its
# programs>, both named from the embedded BPF object.
MAP_NAMES: Tuple[str, ...] = MAPS
PROG_NAMES: Tuple[str, ...] = PROGRAMS + tuple(n for g, ns in sorted(GROUP_PROGRAMS.items()) if g for n in ns)
_TOP = ("maps", "links")


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


def _mount_points() -> List[str]:
    """Every mount point of this mount namespace (from /proc/self/mountinfo)."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # Field 5 is the mount point, with octal escapes (\040 for a space, ...).
    unescape = re.compile(rb"\\([0-7]{3})")
    return [
        os.fsdecode(unescape.sub(lambda m: bytes([int(m.group(1), 8)]), parts[4]))
        for parts in (line.split() for line in lines)
        if len(parts) > 4
    ]


def _is_mount_point(real: str) -> bool:
    return os.path.ismount(real) or real in _mount_points()


def _is_dir(path: str) -> bool:
    """A real directory (not a symlink to one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _is_pin(path: str) -> bool:
    """A pinned BPF object (bpffs shows them as regular files)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _is_cgroup_id(name: str) -> bool:
    return name.isascii() and name.isdigit()


def _has_meta(d: str) -> bool:
    """Whether ``d`` holds a balancer's pins: a ``maps/meta`` map that starts
    with socklb's magic (of any layout version)."""
    path = os.path.join(d, "maps", "meta")
    if not _is_pin(path):
        return False
    buf = ffi.new("uint32_t[]", 2)
    actual = ffi.new("uint32_t *")
    rc = int(lib.socklb_read_pinned(os.fsencode(path), buf, 8, actual))
    if rc in (-errno.EACCES, -errno.EPERM):
        raise PermissionDeniedError(f"reading {path}", -rc)
    return rc == 0 and actual[0] >= 8 and int(buf[0]) == lib.SOCKLB_META_MAGIC


def _foreign_entries(pin_dir: str) -> List[str]:
    """The entries below ``pin_dir`` that are not socklb's layout."""

    def not_ours(d: str, names: Tuple[str, ...]) -> List[str]:
        return [os.path.join(d, n) for n in os.listdir(d) if n not in names or not _is_pin(os.path.join(d, n))]

    out = [
        os.path.join(pin_dir, n) for n in os.listdir(pin_dir) if n not in _TOP or not _is_dir(os.path.join(pin_dir, n))
    ]
    maps = os.path.join(pin_dir, "maps")
    if _is_dir(maps):
        out += not_ours(maps, MAP_NAMES)
    links = os.path.join(pin_dir, "links")
    if _is_dir(links):
        for cg in os.listdir(links):
            d = os.path.join(links, cg)
            out += not_ours(d, PROG_NAMES) if _is_cgroup_id(cg) and _is_dir(d) else [d]
    return out


def _check_location(real: str) -> None:
    """Refuse the root of a bpffs and any place inside another balancer's pin tree."""
    if real == DEFAULT_BPFFS or (os.path.exists(real) and _is_mount_point(real)):
        raise InvalidValueError(
            "pin_dir",
            f"{real} is the root of a bpf filesystem, where other programs pin too: "
            f"use a directory of socklb's own below it (e.g. {os.path.join(real, 'socklb')})",
        )
    anc = os.path.dirname(real)
    while True:
        if os.path.isdir(anc) and _has_meta(anc):
            raise InvalidValueError(
                "pin_dir", f"{real} is inside the pin directory of another balancer ({anc}): use a directory outside it"
            )
        if anc == "/" or (os.path.exists(anc) and _is_mount_point(anc)):
            return
        anc = os.path.dirname(anc)


def make_dir(path: str) -> bool:
    """Create the directory ``path`` with mode 0700 (whatever the umask);
    an existing one is left as it is.  Returns whether it was created."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise InvalidValueError("pin_dir", f"{path} exists and is not a directory") from None
        return False
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return True


def prepare(pin_dir: str) -> str:
    """Make ``pin_dir`` (absolute) ready: on bpffs (mounting bpffs at
    /sys/fs/bpf if nothing is mounted there), with maps/ and links/ below it.
    Directories it creates are 0700; an existing ``pin_dir`` keeps its mode.
    Refuses (:class:`~socklb.errors.InvalidValueError`, nothing created) the
    root of a bpffs, a place inside another balancer's pin tree, and a
    non-empty directory that holds no socklb layout (see the module's rules).
    Returns the real path."""
    if not os.path.isabs(pin_dir):
        raise InvalidValueError("pin_dir", f"must be an absolute path, not {pin_dir!r}")
    real = os.path.realpath(pin_dir)
    anc = _existing_ancestor(real)
    try:
        on_bpffs = is_bpffs(anc)
        if not on_bpffs:
            if (real + "/").startswith(DEFAULT_BPFFS + "/") and anc in (DEFAULT_BPFFS, os.path.dirname(DEFAULT_BPFFS)):
                _check_location(real)  # before mounting: never mount a bpffs only to use its root
                os.makedirs(DEFAULT_BPFFS, exist_ok=True)
                _mount_bpffs(DEFAULT_BPFFS)
            else:
                raise InvalidValueError(
                    "pin_dir", f"{pin_dir} is not on a bpf filesystem (mount one, or use {DEFAULT_BPFFS})"
                )
        _check_location(real)
        if os.path.lexists(real):
            if not _is_dir(real):
                raise InvalidValueError("pin_dir", f"{real} exists and is not a directory")
            _refuse_foreign(real, "is not empty and its content is not socklb's ({}): use a new or empty directory")
        for d in (real, os.path.join(real, "maps"), os.path.join(real, "links")):
            make_dir(d)
    except PermissionError as e:
        raise PermissionDeniedError(f"preparing {pin_dir}", e.errno or errno.EACCES) from None
    except KernelError as e:
        if e.errno in (errno.EACCES, errno.EPERM) and not isinstance(e, PermissionDeniedError):
            raise PermissionDeniedError(e.op, e.errno) from None
        raise
    return real


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


def _refuse_foreign(real: str, why: str) -> None:
    """InvalidValueError if ``real`` holds no socklb meta map and entries that
    are not socklb's; ``why`` gets the first few of them."""
    if _has_meta(real):
        return
    foreign = _foreign_entries(real)
    if foreign:
        shown = ", ".join(sorted(os.path.relpath(p, real) for p in foreign)[:5])
        raise InvalidValueError("pin_dir", f"{real} " + why.format(shown))


def _unpin(path: str) -> None:
    """Unpin ``path`` if it is a pin (a directory or symlink is not socklb's)."""
    if _is_pin(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
            raise


def remove_links(link_dir: str) -> None:
    """Unpin socklb's link pins in ``link_dir`` (``<pin_dir>/links/<cgroup
    id>``), which detaches them unless someone holds them open, and remove the
    directory if that left it empty.  Other entries stay, and a directory whose
    name is not a cgroup id is not socklb's: it is not touched."""
    if not _is_cgroup_id(os.path.basename(os.path.normpath(link_dir))) or not _is_dir(link_dir):
        return
    for name in PROG_NAMES:
        _unpin(os.path.join(link_dir, name))
    _rmdir_if_empty(link_dir)


def remove(pin_dir: str) -> None:
    """Remove socklb's pins below ``pin_dir`` - its link pins (which detaches
    them) and its maps - and the directories that leaves empty, ``pin_dir``
    included.  Nothing else is touched (see the module's rules).

    Refuses the root of a bpffs, a directory that is not on bpffs, a non-empty
    directory that holds no socklb layout (:class:`~socklb.errors.InvalidValueError`)
    and a directory another process owns (:class:`~socklb.errors.PinLockedError`).
    A ``pin_dir`` that does not exist is nothing to do."""
    real = os.path.realpath(pin_dir)
    if not os.path.isdir(real):
        return
    if not is_bpffs(real):
        raise InvalidValueError("pin_dir", f"{pin_dir} is not on a bpf filesystem; not removing it")
    if _is_mount_point(real):
        raise InvalidValueError(
            "pin_dir", f"{real} is the root of a bpf filesystem, not a socklb pin directory; not removing anything"
        )
    try:
        _refuse_foreign(real, "holds no socklb layout and its content is not socklb's ({}); not removing it")
        pid = holder_pid(real)
        if pid is not None and pid != os.getpid():
            raise PinLockedError(real, pid)
        links = os.path.join(real, "links")
        if _is_dir(links):
            for name in sorted(os.listdir(links)):
                remove_links(os.path.join(links, name))
            _rmdir_if_empty(links)
        maps = os.path.join(real, "maps")
        if _is_dir(maps):
            for name in MAP_NAMES:
                _unpin(os.path.join(maps, name))
            _rmdir_if_empty(maps)
        _rmdir_if_empty(real)
    except PermissionError as e:
        raise PermissionDeniedError(f"removing the pins in {real}", e.errno or errno.EACCES) from None
