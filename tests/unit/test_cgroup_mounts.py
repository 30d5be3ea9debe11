"""Tests of socklb.datapath.cgroup: mountinfo parsing (pure) and cgroup management (root)."""

from __future__ import annotations

import os
import textwrap

import pytest

from socklb.datapath import cgroup
from socklb.errors import MissingFeatureError, NotCgroupV2Error

HYBRID = textwrap.dedent(
    """\
    22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
    23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
    31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
    32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
    33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
    34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
    35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
    """
)

PURE_V2 = textwrap.dedent(
    """\
    22 1 253:0 / / rw,relatime shared:1 - xfs /dev/mapper/root rw
    23 22 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw
    27 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
    28 23 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:5 - bpf bpf rw,mode=700
    """
)

NO_V2 = textwrap.dedent(
    """\
    22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
    31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
    33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
    """
)


# -- pure parsing -------------------------------------------------------------


def test_parse_hybrid_layout() -> None:
    assert cgroup.parse_cgroup2_mount(HYBRID) == "/sys/fs/cgroup/unified"


def test_parse_pure_v2_layout() -> None:
    assert cgroup.parse_cgroup2_mount(PURE_V2) == "/sys/fs/cgroup"


def test_parse_without_cgroup2() -> None:
    assert cgroup.parse_cgroup2_mount(NO_V2) is None
    assert cgroup.parse_cgroup2_mount("") is None


def test_parse_first_of_several_and_octal_escapes() -> None:
    text = (
        "40 22 0:40 / /mnt/my\\040cgroups\\011x rw - cgroup2 none rw\n"
        "41 22 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroup.parse_cgroup2_mount(text) == "/mnt/my cgroups\tx"


def test_parse_optional_fields_and_garbage() -> None:
    text = (
        "garbage line without separator\n"
        "1 2 x:y / /bad rw - cgroup2 cgroup2 rw\n"  # bad device number: skipped
        "50 22 0:45 / /cg rw shared:3 master:1 propagate_from:2 - cgroup2 cgroup2 rw\n"
    )
    assert cgroup.parse_cgroup2_mount(text) == "/cg"
    (entry,) = cgroup.parse_mountinfo(text)
    assert entry.dev == (0, 45)
    assert entry.fstype == "cgroup2"
    assert entry.root == "/"


def test_parse_mountinfo_fields() -> None:
    entries = cgroup.parse_mountinfo(HYBRID)
    assert [e.fstype for e in entries][:4] == ["ext4", "sysfs", "tmpfs", "cgroup2"]
    assert entries[3].dev == (0, 29)
    assert entries[0].source == "/dev/sda1"


def test_parse_real_mountinfo() -> None:
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    mount = cgroup.parse_cgroup2_mount(text)
    assert mount is None or os.path.isabs(mount)


def test_cgroup2_mount_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "_read_mountinfo", lambda: NO_V2)
    with pytest.raises(MissingFeatureError) as info:
        cgroup.cgroup2_mount()
    assert "cgroup v2" in str(info.value)
    assert info.value.kernel == "4.5"


def test_check_dir_errors_without_root(tmp_path: os.PathLike[str]) -> None:
    base = os.fspath(tmp_path)
    with pytest.raises(NotCgroupV2Error, match="does not exist"):
        cgroup.check_cgroup2_dir(os.path.join(base, "nope"), mountinfo=HYBRID)
    f = os.path.join(base, "file")
    open(f, "w").close()
    with pytest.raises(NotCgroupV2Error, match="is not a directory"):
        cgroup.check_cgroup2_dir(f, mountinfo=HYBRID)
    # Pretend tmp_path's filesystem is a cgroup v1 hierarchy, then cgroup2, then tmpfs.
    st = os.stat(base)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    v1 = f"90 1 {dev} / /fake rw - cgroup cgroup rw,cpu\n" + PURE_V2
    with pytest.raises(NotCgroupV2Error, match="cgroup v1") as info:
        cgroup.check_cgroup2_dir(base, mountinfo=v1)
    assert info.value.mount == "/sys/fs/cgroup"
    v2 = f"90 1 {dev} / /fake rw - cgroup2 cgroup2 rw\n"
    assert cgroup.check_cgroup2_dir(base, mountinfo=v2) == os.path.realpath(base)
    other = f"90 1 {dev} / /fake rw - tmpfs tmpfs rw\n"
    with pytest.raises(NotCgroupV2Error, match="not a cgroup filesystem") as info:
        cgroup.check_cgroup2_dir(base, mountinfo=other)
    assert info.value.mount is None
    assert "no cgroup v2 mount" in str(info.value)


# -- the real cgroup v2 hierarchy (root) --------------------------------------


def test_check_real_dirs() -> None:
    mount = cgroup.cgroup2_mount()
    assert cgroup.check_cgroup2_dir(mount + "/") == os.path.realpath(mount)
    with pytest.raises(NotCgroupV2Error, match="not a cgroup filesystem") as info:
        cgroup.check_cgroup2_dir("/proc")
    assert info.value.mount == mount
    with pytest.raises(NotCgroupV2Error, match="is not a directory"):
        cgroup.check_cgroup2_dir(os.path.join(mount, "cgroup.procs"))
    for e in cgroup.parse_mountinfo(open("/proc/self/mountinfo").read()):
        if e.fstype == "cgroup" and os.path.isdir(e.mount_point):  # hybrid systems only
            with pytest.raises(NotCgroupV2Error, match="cgroup v1"):
                cgroup.check_cgroup2_dir(e.mount_point)
            break
