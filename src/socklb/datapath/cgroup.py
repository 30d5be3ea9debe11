"""Helpers for cgroup v2 directories.

socklb attaches its programs to cgroup v2 directories; this module finds the
cgroup v2 mount, checks that a path really is a cgroup v2 directory and creates
and removes cgroups (killing whatever runs inside them first).

The cgroup v2 hierarchy is not always at ``/sys/fs/cgroup``: on a "hybrid"
system it is at ``/sys/fs/cgroup/unified`` while the v1 controllers occupy
``/sys/fs/cgroup``.  Nothing here hard-codes a location; the mount is read from
``/proc/self/mountinfo``.

Example::

    >>> from socklb.datapath import cgroup
    >>> root = cgroup.cgroup2_mount()            # doctest: +SKIP
    >>> path = cgroup.make_cgroup(root + "/demo")  # doctest: +SKIP
    >>> cgroup.move_pid(path, os.getpid())        # doctest: +SKIP
    >>> cgroup.remove_cgroup(path)               # doctest: +SKIP

This module only uses the standard library and never imports socklb's native
extension.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from typing import Optional, Union

from socklb.errors import InvalidValueError, KernelError, MissingFeatureError, NotCgroupV2Error

__all__ = [
    "MountEntry",
    "parse_mountinfo",
    "parse_cgroup2_mount",
    "cgroup2_mount",
    "check_cgroup2_dir",
    "make_cgroup",
    "remove_cgroup",
    "move_pid",
    "cgroup_procs",
    "pid_cgroup",
]

MOUNTINFO = "/proc/self/mountinfo"

# Time remove_cgroup() waits for killed processes to leave, by default.
DEFAULT_REMOVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``.

    ``mount_point`` and ``root`` have their octal escapes (``\\040`` for a
    space and so on) decoded.  ``dev`` is ``(major, minor)``.

    Example::

        >>> e = parse_mountinfo("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw")[0]
        >>> e.mount_point, e.fstype, e.dev
        ('/sys/fs/cgroup/unified', 'cgroup2', (0, 38))
    """

    dev: tuple[int, int]
    root: str
    mount_point: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    r"""Decode the ``\ooo`` octal escapes the kernel uses in mountinfo paths."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C and i + 3 < len(raw) and all(0x30 <= d <= 0x37 for d in raw[i + 1 : i + 4]):
            out.append(int(raw[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse the text of ``/proc/<pid>/mountinfo``; malformed lines are skipped.

    Example::

        >>> [e.fstype for e in parse_mountinfo(
        ...     "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\\n"
        ...     "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\\n")]
        ['tmpfs', 'cgroup2']
    """
    entries: list[MountEntry] = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        left = pre.split()
        right = post.split()
        if len(left) < 5 or len(right) < 2:
            continue
        major, colon, minor = left[2].partition(":")
        try:
            dev = (int(major), int(minor))
        except ValueError:
            continue
        if not colon:
            continue
        entries.append(
            MountEntry(
                dev=dev,
                root=_unescape(left[3]),
                mount_point=_unescape(left[4]),
                fstype=right[0],
                source=_unescape(right[1]),
            )
        )
    return entries


def parse_cgroup2_mount(mountinfo_text: str) -> Optional[str]:
    """Return the mount point of the first cgroup2 mount in ``mountinfo_text``, or None.

    Example::

        >>> parse_cgroup2_mount("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw")
        '/sys/fs/cgroup/unified'
        >>> parse_cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw") is None
        True
    """
    for entry in parse_mountinfo(mountinfo_text):
        if entry.fstype == "cgroup2":
            return entry.mount_point
    return None


def _read_mountinfo() -> str:
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def cgroup2_mount() -> str:
    """Return where the cgroup v2 filesystem is mounted, e.g. ``/sys/fs/cgroup``.

    Raises :class:`~socklb.errors.MissingFeatureError` when there is no cgroup2 mount.

    Example::

        >>> cgroup2_mount()                      # doctest: +SKIP
        '/sys/fs/cgroup/unified'
    """
    try:
        text = _read_mountinfo()
    except OSError as e:
        raise MissingFeatureError("a cgroup v2 mount", "4.5", f"cannot read {MOUNTINFO}: {e}") from e
    mount = parse_cgroup2_mount(text)
    if mount is None:
        raise MissingFeatureError(
            "a cgroup v2 mount",
            "4.5",
            f"no filesystem of type cgroup2 is listed in {MOUNTINFO}; mount one "
            "(mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with systemd.unified_cgroup_hierarchy=1",
        )
    return mount


def check_cgroup2_dir(path: str, *, mountinfo: Optional[str] = None) -> str:
    """Return the real path of ``path`` if it is a directory on a cgroup v2 filesystem.

    Otherwise raise :class:`~socklb.errors.NotCgroupV2Error` whose message says
    why (does not exist, is not a directory, is on a cgroup v1 hierarchy, is on
    some other filesystem) and where cgroup v2 is mounted, if anywhere.

    The filesystem is identified by matching the directory's device number
    against the entries of ``/proc/self/mountinfo`` (or of the text
    ``mountinfo``, if given).

    Example::

        >>> check_cgroup2_dir("/sys/fs/cgroup/unified/")   # doctest: +SKIP
        '/sys/fs/cgroup/unified'
        >>> check_cgroup2_dir("/tmp")                      # doctest: +SKIP
        Traceback (most recent call last):
        socklb.errors.NotCgroupV2Error: /tmp: is on a tmpfs filesystem, not cgroup2: ...
    """
    text: Optional[str] = mountinfo
    if text is None:
        try:
            text = _read_mountinfo()
        except OSError:
            text = None
    mount = parse_cgroup2_mount(text) if text is not None else None
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise NotCgroupV2Error(path, "does not exist", mount) from None
    except OSError as e:
        raise NotCgroupV2Error(path, f"cannot be examined ({e.strerror})", mount) from None
    if not os.path.isdir(real):
        raise NotCgroupV2Error(path, "is not a directory", mount)
    if text is None:
        raise NotCgroupV2Error(path, f"cannot tell its filesystem: {MOUNTINFO} is unreadable", mount)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    fstypes = {e.fstype for e in parse_mountinfo(text) if e.dev == dev}
    if "cgroup2" in fstypes:
        return real
    if "cgroup" in fstypes:
        raise NotCgroupV2Error(path, "is on a cgroup v1 hierarchy", mount)
    if fstypes:
        kind = "/".join(sorted(fstypes))
        raise NotCgroupV2Error(path, f"is not a cgroup filesystem (it is on {kind})", mount)
    raise NotCgroupV2Error(path, "is not a cgroup filesystem", mount)


def _mount_of(real: str) -> str:
    """The cgroup2 mount point that contains the cgroup2 directory ``real``."""
    st = os.stat(real)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    best = ""
    for e in parse_mountinfo(_read_mountinfo()):
        if e.fstype != "cgroup2" or e.dev != dev:
            continue
        mp = e.mount_point.rstrip("/") or "/"
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) > len(best):
            best = mp
    return best


def make_cgroup(path: str, exist_ok: bool = False) -> str:
    """Create the cgroup directory ``path`` (and missing parents); return its real path.

    The nearest existing ancestor must be a cgroup v2 directory
    (:class:`~socklb.errors.NotCgroupV2Error` otherwise), so this never creates
    directories outside cgroupfs.  With ``exist_ok`` an existing cgroup is fine.

    Example::

        >>> make_cgroup(cgroup2_mount() + "/socklb-demo/a")   # doctest: +SKIP
        '/sys/fs/cgroup/unified/socklb-demo/a'
    """
    target = os.path.abspath(path)
    missing: list[str] = []
    cur = target
    while not os.path.lexists(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    base = check_cgroup2_dir(cur)
    if not missing:
        if not exist_ok:
            raise KernelError("mkdir", errno.EEXIST, target)
        return base
    for d in reversed(missing):
        try:
            os.mkdir(os.path.join(base, os.path.relpath(d, cur)))
        except FileExistsError:
            if d == target and not exist_ok:
                raise KernelError("mkdir", errno.EEXIST, target) from None
        except OSError as e:
            raise KernelError("mkdir", e.errno or errno.EIO, d) from e
    return os.path.realpath(target)


def cgroup_procs(path: str) -> list[int]:
    """Return the pids listed in ``path/cgroup.procs`` (processes directly in this cgroup).

    Example::

        >>> cgroup_procs(cgroup2_mount() + "/socklb-demo/a")   # doctest: +SKIP
        [4242]
    """
    with open(os.path.join(path, "cgroup.procs"), encoding="ascii") as f:
        return [int(x) for x in f.read().split()]


def move_pid(path: str, pid: int) -> None:
    """Move process ``pid`` (all its threads) into the cgroup ``path``.

    Example::

        >>> move_pid(cgroup2_mount() + "/socklb-demo/a", os.getpid())   # doctest: +SKIP
    """
    procs = os.path.join(path, "cgroup.procs")
    try:
        with open(procs, "w", encoding="ascii") as f:
            f.write(f"{int(pid)}\n")
    except OSError as e:
        raise KernelError("write cgroup.procs", e.errno or errno.EIO, f"pid {pid} -> {path}") from e


def pid_cgroup(pid: Union[int, str] = "self") -> Optional[str]:
    """Return the cgroup v2 path of ``pid`` relative to the cgroup2 mount (``0::`` line of
    ``/proc/PID/cgroup``), or None if the process is gone or has no v2 entry.

    Example::

        >>> pid_cgroup()                       # doctest: +SKIP
        '/user.slice/user-0.slice/session-1.scope'
    """
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def _populated(path: str) -> bool:
    """True while any process remains in ``path`` or below it."""
    try:
        with open(os.path.join(path, "cgroup.events"), encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() != "0"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    # Fallback: look at every cgroup.procs in the subtree.
    for dirpath, _dirs, _files in os.walk(path):
        try:
            if cgroup_procs(dirpath):
                return True
        except OSError:
            continue
    return False


# Use cgroup.kill where the kernel has it (5.14+); tests turn this off to
# exercise the SIGKILL fallback.
_USE_CGROUP_KILL = True


def _kill_subtree(path: str) -> None:
    kill_file = os.path.join(path, "cgroup.kill")
    if _USE_CGROUP_KILL and os.path.exists(kill_file):
        try:
            with open(kill_file, "w", encoding="ascii") as f:
                f.write("1\n")
            return
        except OSError:
            pass  # fall back to signalling each process
    me = os.getpid()
    for dirpath, _dirs, _files in os.walk(path):
        try:
            pids = cgroup_procs(dirpath)
        except OSError:
            continue
        for p in pids:
            if p == me:
                continue
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_cgroup(path: str, timeout: float = DEFAULT_REMOVE_TIMEOUT) -> int:
    """Kill every process in the cgroup ``path`` and below, then remove the whole subtree.

    Uses ``cgroup.kill`` (Linux 5.14+) and falls back to sending SIGKILL to each
    pid in ``cgroup.procs``; then waits up to ``timeout`` seconds for the
    processes to leave and removes the directories depth-first.  Returns the
    number of directories removed (0 if ``path`` does not exist).

    Refuses (:class:`~socklb.errors.InvalidValueError`) to act on the root of a
    cgroup2 mount or on a cgroup that holds the calling process, and raises
    :class:`~socklb.errors.NotCgroupV2Error` for paths outside cgroup v2.  If
    the subtree cannot be emptied or removed in time it raises
    :class:`~socklb.errors.KernelError` (``EBUSY``).

    Example::

        >>> remove_cgroup(cgroup2_mount() + "/socklb-demo")   # doctest: +SKIP
        2
    """
    if not os.path.lexists(path):
        return 0
    real = check_cgroup2_dir(path)
    mount = _mount_of(real)
    if not mount or real == mount:
        raise InvalidValueError("path", f"{path}: refusing to remove the root of a cgroup2 mount")
    own = pid_cgroup()
    if own is not None:
        own_abs = os.path.normpath(mount + "/" + own.lstrip("/"))
        if own_abs == real or own_abs.startswith(real + "/"):
            raise InvalidValueError("path", f"{path}: refusing to remove the cgroup of the calling process")

    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.002
    removed = 0
    # Kill, then remove depth-first; repeat while something is busy - a process
    # may have forked, or joined the subtree, while we were killing.
    while True:
        if _populated(real):
            _kill_subtree(real)
        busy: Optional[tuple[str, OSError]] = None
        for d in [d for d, _s, _f in os.walk(real, topdown=False)]:
            try:
                os.rmdir(d)
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise KernelError("rmdir", e.errno or errno.EIO, d) from e
                busy = (d, e)
                break
        if busy is None:
            return removed
        if time.monotonic() >= deadline:
            what = "processes still running" if _populated(busy[0]) else "busy"
            raise KernelError("rmdir", errno.EBUSY, f"{busy[0]}: {what} after {timeout:g}s") from busy[1]
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
