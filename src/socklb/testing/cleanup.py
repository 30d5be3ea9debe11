"""What outlives a crashed lab, and how it is found: the lab's lock file
(``/run/socklb-lab/<id>.lock``, held with ``flock`` while the lab is alive),
and :func:`cleanup_leftovers`, which removes the namespaces, cgroups and lock
files of labs whose lock no process holds."""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from typing import Optional

from pyroute2 import netns as _pr_netns  # type: ignore[import-untyped,unused-ignore]

from socklb.datapath import cgroup as _cg
from socklb.errors import SocklbError
from socklb.testing.errors import LabError
from socklb.testing.netns import _NETNS_RE, NETNS_PREFIX, _netns_path, _remove_netns

__all__ = ["CGROUP_DIR", "LOCK_DIR", "cleanup_leftovers"]

#: Lab cgroups live in ``<cgroup2 mount>/socklb-lab/<id>/``.
CGROUP_DIR = "socklb-lab"
#: Lock files of live labs: ``/run/socklb-lab/<id>.lock``.
LOCK_DIR = "/run/socklb-lab"
_ID_RE = re.compile(r"^[0-9a-f]{6}$")


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _take_lock(mount: str) -> tuple[str, int, str]:
    """Allocate a lab id and hold its lock file: (id, the locked fd, the lock's path)."""
    for _attempt in range(20):
        try:
            os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
            lab_id = secrets.token_hex(3)
            if (
                os.path.lexists(_netns_path(f"{NETNS_PREFIX}{lab_id}-node"))
                or os.path.lexists(os.path.join(mount, CGROUP_DIR, lab_id))
                or os.path.lexists(os.path.join(LOCK_DIR, lab_id + ".lock"))
            ):
                continue
            tmp = os.path.join(LOCK_DIR, f".{lab_id}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # LOCK_DIR removed concurrently by another lab
            continue
        except OSError as e:
            raise LabError(f"cannot create a lock file in {LOCK_DIR}: {e}") from e
        final = os.path.join(LOCK_DIR, lab_id + ".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.link(tmp, final)  # atomic, never replaces an existing lock
        except OSError:
            os.close(fd)
            continue
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return lab_id, fd, final
    raise LabError(f"could not allocate a lab id (lock files in {LOCK_DIR})")


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def _lock_is_free(path: str) -> bool:
    """True if no live process holds the lock file at ``path`` (or it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def cleanup_leftovers(include_live: bool = False) -> int:
    """Remove the namespaces, cgroups and lock files that crashed labs left behind.

    A lab counts as crashed when no process holds its lock; labs still in use
    (by this or any other process) are left alone unless ``include_live``.
    Processes in leftover cgroups are killed.  Returns how many namespaces and
    cgroup directories were removed.

    Example::

        >>> cleanup_leftovers()                          # doctest: +SKIP
        3
    """
    ids: dict[str, list[str]] = {}
    for entry in _pr_netns.listnetns():
        m = _NETNS_RE.match(str(entry))
        if m:
            ids.setdefault(m.group(1), []).append(str(entry))
    try:
        mount: Optional[str] = _cg.cgroup2_mount()
    except SocklbError:
        mount = None
    cg_root = os.path.join(mount, CGROUP_DIR) if mount else None
    if cg_root is not None:
        try:
            for entry in os.listdir(cg_root):
                if _ID_RE.match(entry):
                    ids.setdefault(entry, [])
        except FileNotFoundError:
            pass
    stale_tmp: list[str] = []
    try:
        for entry in os.listdir(LOCK_DIR):
            if entry.endswith(".lock") and _ID_RE.match(entry[:-5]):
                ids.setdefault(entry[:-5], [])
            elif entry.startswith(".") and entry.endswith(".tmp"):
                stale_tmp.append(os.path.join(LOCK_DIR, entry))
    except FileNotFoundError:
        pass

    removed = 0
    problems: list[str] = []
    for lab_id, namespaces in sorted(ids.items()):
        lock = os.path.join(LOCK_DIR, lab_id + ".lock")
        if not include_live and not _lock_is_free(lock):
            continue
        if cg_root is not None:
            try:
                removed += _cg.remove_cgroup(os.path.join(cg_root, lab_id))
            except Exception as e:
                problems.append(f"cgroup of lab {lab_id}: {_describe(e)}")
        for ns in namespaces:
            try:
                if _remove_netns(ns):
                    removed += 1
            except Exception as e:
                problems.append(f"netns {ns}: {_describe(e)}")
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"{lock}: {e}")
    for tmp in stale_tmp:
        if _lock_is_free(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
    if cg_root is not None:
        _rmdir_quiet(cg_root)
    _rmdir_quiet(LOCK_DIR)
    if problems:
        raise LabError(f"cleanup_leftovers removed {removed} objects but failed on: {'; '.join(problems)}")
    return removed
