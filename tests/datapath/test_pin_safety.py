"""What a pinned balancer may touch on bpffs (socklb.datapath.pins): only its own
entries.  destroy() and pins.remove() leave other programs' pins alone; the
bpffs root, a directory inside another balancer's pin tree and a non-empty
directory that holds no socklb layout are refused; an existing directory keeps
its mode.

Every test works in a directory of its own below /sys/fs/bpf (or on a private
bpffs it mounts on a temporary directory), in a cgroup of its own, and removes
them even when it fails.  "Foreign" pins are real BPF maps pinned by the test,
each holding a value that is checked afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import subprocess
import tempfile
import time
import uuid
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
from helpers import raw_map, require_root
from pinned import _bpf, holder, obj_get, pinned_dir, prog_exists, read_pinned, tree, write_meta

from socklb import Backend, Balancer, Service
from socklb._native import ffi, lib
from socklb._native.abi import META, U32
from socklb.datapath import pins as pins_mod
from socklb.datapath.cgroup import cgroup2_mount
from socklb.errors import IncompatiblePinsError, InvalidValueError, PinLockedError

MAIN_PROGS = [ffi.string(lib.socklb_prog_name(i)).decode() for i in range(lib.SOCKLB_NPROGS)]
# And the scope programs (exclude_*, hostonly_*), pinned by exclusions and host-netns-only attachments.
PROG_NAMES = MAIN_PROGS + [
    ffi.string(lib.socklb_group_prog_name(g, i)).decode()
    for g in (lib.SOCKLB_GROUP_EXCLUDE, lib.SOCKLB_GROUP_HOSTONLY)
    for i in range(lib.SOCKLB_NGATE)
]
SVC = Service("10.96.0.10", 80, "tcp", [Backend("10.0.0.1", 8080), Backend("10.0.0.2", 8080)])
BPF_MAP_TYPE_ARRAY = 2


# =============================================================================
# Helpers
# =============================================================================


def pin_foreign(path: str, value: int) -> None:
    """Pin at ``path`` a one-entry array map (another program's) holding ``value``."""
    bpf = _bpf()
    bpf.bpf_map_create.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    bpf.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
    fd = int(bpf.bpf_map_create(BPF_MAP_TYPE_ARRAY, b"foreign", 4, 4, 1, None))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        raw_map(fd, "foreign", 4, 4).update(U32.pack(0), U32.pack(value), 1)
        assert int(bpf.bpf_obj_pin(fd, os.fsencode(path))) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


def foreign_value(path: str) -> int:
    fd = obj_get(path)
    try:
        v = raw_map(fd, "foreign", 4, 4).lookup(U32.pack(0))
        assert v is not None
        return int(U32.unpack(v)[0])
    finally:
        os.close(fd)


def plant(paths: List[str]) -> Dict[str, int]:
    """Foreign pins at ``paths`` (directories made as needed); their values."""
    out = {}
    for i, p in enumerate(paths):
        os.makedirs(os.path.dirname(p), 0o755, exist_ok=True)
        pin_foreign(p, 1000 + i)
        out[p] = 1000 + i
    return out


def assert_intact(planted: Dict[str, int]) -> None:
    for p, v in planted.items():
        assert os.path.lexists(p), f"{p} (not socklb's) was removed"
        assert foreign_value(p) == v, p


def socklb_entries(pd: str) -> List[str]:
    """Paths of socklb's own layout present below ``pd``."""
    found = [os.path.join(pd, "maps", n) for n in pins_mod.MAP_NAMES if os.path.lexists(os.path.join(pd, "maps", n))]
    links = os.path.join(pd, "links")
    if os.path.isdir(links):
        for cg in os.listdir(links):
            if cg.isdigit():
                found += [os.path.join(links, cg, p) for p in PROG_NAMES if os.path.lexists(os.path.join(links, cg, p))]
    return found


def wait_freed(prog_ids: List[int]) -> None:
    deadline = time.monotonic() + 10
    while any(prog_exists(i) for i in prog_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [i for i in prog_ids if prog_exists(i)] == [], "programs still loaded: links were not unpinned"


@contextlib.contextmanager
def own_cgroup() -> Iterator[str]:
    """A cgroup of this test's own (no process in it), removed at the end."""
    require_root()
    path = os.path.join(cgroup2_mount(), f"socklb-test-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


@pytest.fixture
def cgroup() -> Iterator[str]:
    with own_cgroup() as cg:
        yield cg


@pytest.fixture
def pin_dir() -> Iterator[str]:
    with pinned_dir() as pd:
        yield pd


@pytest.fixture
def bpffs_root() -> Iterator[str]:
    """A private bpffs instance mounted on a temporary directory, mode 1777 like
    /sys/fs/bpf on many systems; unmounted (with whatever is pinned) at the end."""
    require_root()
    mnt = tempfile.mkdtemp(prefix="socklb-test-bpffs-")
    try:
        subprocess.run(["mount", "-t", "bpf", "bpf", mnt], check=True, capture_output=True)
        try:
            os.chmod(mnt, 0o1777)
            yield mnt
        finally:
            subprocess.run(["umount", mnt], check=True, capture_output=True)
    finally:
        os.rmdir(mnt)


# =============================================================================
# destroy() and pins.remove() remove only socklb's entries
# =============================================================================


def test_destroy_leaves_foreign_entries(pin_dir: str, cgroup: str) -> None:
    lb = Balancer(pin_dir=pin_dir)
    try:
        lb.upsert(SVC)
        att = lb.attach(cgroup)
        ids = att.program_ids()
        cg = os.path.join(pin_dir, "links", str(att.cgroup_id))
        planted = plant(
            [
                os.path.join(pin_dir, "foreign"),
                os.path.join(pin_dir, "other", "state"),
                os.path.join(pin_dir, "maps", "foreign"),
                os.path.join(cg, "foreign"),
            ]
        )
    finally:
        lb.destroy()
    assert_intact(planted)
    assert socklb_entries(pin_dir) == []
    wait_freed(ids)
    # What is left is exactly the foreign entries and the directories holding them.
    assert sorted(tree(pin_dir)) == sorted(
        [
            pin_dir,
            *planted,
            os.path.join(pin_dir, "other"),
            os.path.join(pin_dir, "maps"),
            os.path.join(pin_dir, "links"),
            cg,
        ]
    )


def test_adopt_and_destroy_leave_foreign_link_entries(pin_dir: str) -> None:
    """links/ may hold another program's directory (not a cgroup id), and the
    links directory of a removed cgroup may hold a foreign pin: adopting drops
    only socklb's defunct links, destroy only socklb's pins."""
    with own_cgroup() as gone:
        with Balancer(pin_dir=pin_dir) as lb:
            lb.upsert(SVC)
            gone_id = lb.attach(gone).cgroup_id
    gone_dir = os.path.join(pin_dir, "links", str(gone_id))
    planted = plant([os.path.join(pin_dir, "links", "foreign", PROG_NAMES[0]), os.path.join(gone_dir, "foreign")])
    with Balancer.open(pin_dir) as lb:
        assert lb.attachments() == []
        assert lb.services() == [SVC]
        assert [p for p in PROG_NAMES if os.path.lexists(os.path.join(gone_dir, p))] == []
        assert_intact(planted)
    Balancer.open(pin_dir).destroy()
    assert_intact(planted)
    assert socklb_entries(pin_dir) == []


@pytest.mark.parametrize("how", ["version", "magic"])
def test_incompatible_pins_removal_as_recommended_is_safe(pin_dir: str, cgroup: str, how: str) -> None:
    """IncompatiblePinsError recommends socklb.datapath.pins.remove(pin_dir): following
    that advice removes socklb's pins (detaching what they attach), nothing else."""
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(SVC)
        att = lb.attach(cgroup)
        ids = att.program_ids()
        cg = os.path.join(pin_dir, "links", str(att.cgroup_id))
    planted = plant(
        [os.path.join(pin_dir, "foreign"), os.path.join(pin_dir, "maps", "foreign"), os.path.join(cg, "foreign")]
    )
    meta = META.unpack(read_pinned(pin_dir, "meta")[U32.pack(0)])
    magic, version, limits = meta.magic, meta.layout_version, meta[2:]
    if how == "version":  # written by another socklb version
        write_meta(pin_dir, magic, version + 1, limits)
    else:  # a meta map that is not socklb's: with the foreign entries, this is no socklb layout
        write_meta(pin_dir, 0x12345678, version, limits)
    if how == "version":
        with pytest.raises(IncompatiblePinsError) as e:
            Balancer.open(pin_dir)
        assert "socklb.datapath.pins.remove(pin_dir)" in str(e.value)
        assert "only socklb's own entries" in str(e.value)
        pins_mod.remove(pin_dir)
        assert socklb_entries(pin_dir) == []
        wait_freed(ids)
    else:
        before = sorted(tree(pin_dir).items())
        for attempt in (lambda: Balancer.open(pin_dir), lambda: pins_mod.remove(pin_dir)):
            with pytest.raises(InvalidValueError) as e2:
                attempt()
            assert "not socklb's" in str(e2.value)
            assert sorted(tree(pin_dir).items()) == before
    assert_intact(planted)


def test_remove_refuses_pins_owned_by_another_process(pin_dir: str) -> None:
    with holder(pin_dir, [SVC]) as proc:
        before = sorted(tree(pin_dir).items())
        with pytest.raises(PinLockedError) as e:
            pins_mod.remove(pin_dir)
        assert e.value.pid == proc.pid
        assert sorted(tree(pin_dir).items()) == before


# =============================================================================
# Where a pin directory may be
# =============================================================================


def test_bpffs_root_is_refused(bpffs_root: str) -> None:
    planted = plant([os.path.join(bpffs_root, "foreign"), os.path.join(bpffs_root, "tc", "globals", "foreign")])
    planted.update(plant([os.path.join(bpffs_root, "maps", "services")]))  # another program's "maps/services"
    before = sorted(tree(bpffs_root).items())
    attempts: Tuple[Callable[[], Balancer], ...] = (
        lambda: Balancer(pin_dir=bpffs_root),
        lambda: Balancer(pin_dir=bpffs_root + "/"),
    )
    for attempt in attempts:
        lb = None
        try:
            with pytest.raises(InvalidValueError) as e:
                lb = attempt()
        finally:
            if lb is not None:
                lb.close()
        assert e.value.field == "pin_dir" and "root" in str(e.value)
        assert sorted(tree(bpffs_root).items()) == before
    with pytest.raises(InvalidValueError):
        pins_mod.remove(bpffs_root)
    assert sorted(tree(bpffs_root).items()) == before
    assert stat.S_IMODE(os.stat(bpffs_root).st_mode) == 0o1777
    assert_intact(planted)
    # A directory below the root is fine, and destroy leaves the root's other entries.
    pd = os.path.join(bpffs_root, "socklb")
    lb = Balancer(pin_dir=pd)
    lb.upsert(SVC)
    lb.destroy()
    assert not os.path.lexists(pd)
    assert sorted(tree(bpffs_root).items()) == before
    assert_intact(planted)


def test_default_bpffs_path_is_refused_before_mounting(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing mounted there, prepare() mounts bpffs at the default path
    for a pin directory below it, but not to use the new root itself."""
    require_root()
    base = tempfile.mkdtemp(prefix="socklb-test-")
    fake = os.path.join(base, "bpf")
    os.mkdir(fake)
    monkeypatch.setattr(pins_mod, "DEFAULT_BPFFS", fake)
    try:
        with pytest.raises(InvalidValueError):
            pins_mod.prepare(fake)
        assert not os.path.ismount(fake)
        assert os.listdir(fake) == []
    finally:
        if os.path.ismount(fake):
            subprocess.run(["umount", fake], check=True, capture_output=True)
        os.rmdir(fake)
        os.rmdir(base)


@pytest.mark.parametrize("where", ["inner", "maps", "maps/inner", "links", "links/inner", "links/1/deeper"])
def test_pin_dir_inside_another_balancers_tree_is_refused(pin_dir: str, cgroup: str, where: str) -> None:
    with Balancer(pin_dir=pin_dir) as outer:
        outer.upsert(SVC)
        outer.attach(cgroup)
        before = sorted(tree(pin_dir).items())
        services = read_pinned(pin_dir, "services")
        nested = os.path.join(pin_dir, where)
        lb = None
        try:
            with pytest.raises(InvalidValueError) as e:
                lb = Balancer(pin_dir=nested)
        finally:
            if lb is not None:
                lb.destroy()
        assert e.value.field == "pin_dir" and pin_dir in str(e.value)
        # Nothing was created, and the outer balancer's maps are intact.
        assert sorted(tree(pin_dir).items()) == before
        assert read_pinned(pin_dir, "services") == services
        assert outer.services() == [SVC]


def test_existing_directory_keeps_its_mode(pin_dir: str) -> None:
    os.mkdir(pin_dir)
    os.chmod(pin_dir, 0o1777)
    with Balancer(pin_dir=pin_dir) as lb:
        lb.upsert(SVC)
    assert stat.S_IMODE(os.stat(pin_dir).st_mode) == 0o1777
    # What socklb created is 0700 (whatever the umask).
    for sub in ("maps", "links"):
        assert stat.S_IMODE(os.stat(os.path.join(pin_dir, sub)).st_mode) == 0o700
    with Balancer.open(pin_dir):
        pass
    assert stat.S_IMODE(os.stat(pin_dir).st_mode) == 0o1777


def test_created_directories_are_0700_whatever_the_umask(pin_dir: str, cgroup: str) -> None:
    old = os.umask(0o277)
    try:
        with Balancer(pin_dir=pin_dir) as lb:
            att = lb.attach(cgroup)
    finally:
        os.umask(old)
    for d in (
        pin_dir,
        os.path.join(pin_dir, "maps"),
        os.path.join(pin_dir, "links"),
        os.path.join(pin_dir, "links", str(att.cgroup_id)),
    ):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


@pytest.mark.parametrize("content", ["pin", "dir", "maps/foreign", "links/foreign"])
def test_non_empty_directory_without_socklb_layout_is_refused(pin_dir: str, content: str) -> None:
    os.mkdir(pin_dir, 0o755)
    planted = plant([os.path.join(pin_dir, content if content != "dir" else "dir/foreign")])
    before = sorted(tree(pin_dir).items())
    lb = None
    try:
        with pytest.raises(InvalidValueError) as e:
            lb = Balancer(pin_dir=pin_dir)
    finally:
        if lb is not None:
            lb.close()
    assert e.value.field == "pin_dir" and "not socklb's" in str(e.value)
    assert sorted(tree(pin_dir).items()) == before
    # pins.remove finds nothing of socklb's there and says so; nothing is removed.
    with pytest.raises(InvalidValueError):
        pins_mod.remove(pin_dir)
    assert sorted(tree(pin_dir).items()) == before
    assert_intact(planted)


# =============================================================================
# destroy() still removes everything socklb made
# =============================================================================


def test_destroy_removes_everything_socklb_made(pin_dir: str, cgroup: str) -> None:
    lb = Balancer(pin_dir=pin_dir)
    lb.upsert(SVC)
    ids = lb.attach(cgroup).program_ids()
    lb.close()
    lb = Balancer.open(pin_dir)
    lb.destroy()
    assert not os.path.lexists(pin_dir)
    wait_freed(ids)


def test_destroy_removes_an_existing_directory_it_emptied(pin_dir: str) -> None:
    """An existing empty directory given as pin_dir holds nothing but socklb's
    pins afterwards: destroy removes it (an empty directory holds no data)."""
    os.mkdir(pin_dir, 0o755)
    lb = Balancer(pin_dir=pin_dir)
    lb.destroy()
    assert not os.path.lexists(pin_dir)


def test_remove_clears_what_a_crash_left_before_meta(pin_dir: str) -> None:
    """Only socklb's entries, no meta map (killed while creating): not adopted
    (IncompatiblePinsError), and pins.remove clears it."""
    with Balancer(pin_dir=pin_dir):
        pass
    os.unlink(os.path.join(pin_dir, "maps", "meta"))
    with pytest.raises(IncompatiblePinsError):
        Balancer(pin_dir=pin_dir)
    pins_mod.remove(pin_dir)
    assert not os.path.lexists(pin_dir)


def test_layout_names_match_what_is_pinned(pin_dir: str, cgroup: str) -> None:
    """pins.MAP_NAMES and pins.PROG_NAMES are what a balancer pins: a map added
    to the loader but not there would be left behind by destroy()."""
    with Balancer(pin_dir=pin_dir) as lb:
        att = lb.attach(cgroup)
        assert sorted(os.listdir(os.path.join(pin_dir, "maps"))) == sorted(pins_mod.MAP_NAMES)
        assert sorted(os.listdir(os.path.join(pin_dir, "links", str(att.cgroup_id)))) == sorted(MAIN_PROGS)
        assert list(pins_mod.PROG_NAMES) == PROG_NAMES
        att.detach()
        att = lb.attach(cgroup, scope="host-netns-only")
        hostonly = [n for n in PROG_NAMES if n.startswith("hostonly_")]
        assert sorted(os.listdir(os.path.join(pin_dir, "links", str(att.cgroup_id)))) == sorted(MAIN_PROGS + hostonly)
