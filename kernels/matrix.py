"""socklb's kernel matrix: boot Debian's kernels under qemu and run socklb there.

``./run kernels`` runs this.  For each kernel (bullseye's 5.10, bookworm's
6.1, trixie's 6.12) it:

1. downloads the kernel's .deb with apt, through a sources list, lists
   directory and archive cache of its own (the system's apt state is not
   touched), the mirrors read from the system's own sources;
2. makes a Debian root filesystem once with debootstrap, and builds socklb
   inside it with chroot (the guest's clang, libbpf and Python are the ones
   that run it) from the working tree;
3. boots the kernel with 1 vCPU, **no network device** (``-nic none``), the
   root filesystem shared over virtio-9p, an initramfs of busybox and the
   kernel's own 9p modules, the console on the serial port; KVM if a quick
   boot check passes there, else software emulation (TCG);
4. runs, inside: ``socklb doctor``, ``socklb demo`` and pytest (``CI=true``,
   ``SOCKLB_KERNEL_MATRIX=1``: a test skipped for a feature the feature
   table says is missing is allowed), writing the results into the shared
   root filesystem; then prints one table.

Everything is cached under ``/var/cache/socklb-kernels`` (``--cache``): the
.debs, the root filesystem, the extracted kernels.  One boot at a time,
under ``nice``, each with a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
ROOTFS_SUITE = "bookworm"
ROOTFS_PACKAGES = (
    "python3,python3-venv,python3-dev,clang,llvm,gcc,make,pkg-config,libbpf-dev,libelf-dev,zlib1g-dev,"
    "linux-libc-dev,bpftool,iproute2,iputils-ping,procps,kmod,iptables,nftables,dnsmasq-base,dnsutils,"
    "libffi-dev,ca-certificates"
)
# Fast enough under emulation; ``--tests`` selects others ("tests" for all).
FAST_TESTS = (
    "tests/system/test_kernel_fallbacks.py",
    "tests/unit/test_errors.py",
    "tests/datapath/test_tcp.py",
    "tests/datapath/test_udp.py::test_connected_udp_client_moves_off_a_removed_backend",
    "tests/datapath/test_udp.py::test_tcp_termination_is_opt_in",
    "tests/datapath/test_selection.py::test_no_usable_backend_refuses_udp_too",
)
# The initramfs: the modules that mount a 9p root.
INITRD_MODULES = ("virtio_pci", "9pnet_virtio", "9p")


def log(msg: str) -> None:
    print(f"kernels: {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def mirrors() -> Dict[str, str]:
    """The Debian archive and security mirrors of the system's own sources."""
    found: Dict[str, str] = {}
    paths = ["/etc/apt/sources.list"]
    d = "/etc/apt/sources.list.d"
    if os.path.isdir(d):
        paths += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith((".list", ".sources"))]
    for p in paths:
        try:
            text = open(p, encoding="utf-8").read()
        except OSError:
            continue
        for uri in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = uri.rstrip("/")
            if uri.endswith("/debian-security"):
                found.setdefault("security", uri)
            elif uri.endswith("/debian"):
                found.setdefault("archive", uri)
    if "archive" not in found:
        raise SystemExit("kernels: no Debian mirror in the system's apt sources")
    return found


class Apt:
    """apt with a sources list, lists and archive of its own."""

    def __init__(self, cache: str) -> None:
        self.dir = os.path.join(cache, "apt")
        for sub in ("lists/partial", "archives/partial"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        m = mirrors()
        lines = []
        for suite in SUITES.values():
            lines.append(f"deb {m['archive']} {suite} main")
            if "security" in m:
                lines.append(f"deb {m['security']} {suite}-security main")
        with open(os.path.join(self.dir, "sources.list"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self.opts = [
            f"-oDir::Etc::sourcelist={self.dir}/sources.list",
            "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={self.dir}/lists",
            f"-oDir::Cache::Archives={self.dir}/archives",
            f"-oDir::Cache::pkgcache={self.dir}/pkgcache.bin",
            f"-oDir::Cache::srcpkgcache={self.dir}/srcpkgcache.bin",
        ]

    def update(self, max_age: float = 86400) -> None:
        stamp = os.path.join(self.dir, "updated")
        if os.path.exists(stamp) and time.time() - os.path.getmtime(stamp) < max_age:
            return
        log("apt update (own lists)")
        run(["apt-get", *self.opts, "-qq", "update"])
        open(stamp, "w").close()

    def kernel_package(self, series: str) -> str:
        """linux-image-<flavour> of the newest linux-image-amd64 of the series."""
        out = run(["apt-cache", *self.opts, "show", "linux-image-amd64"], capture_output=True).stdout
        versions = [v for v in re.findall(r"^Version: (\S+)", out, re.M) if v.startswith(series + ".")]
        if not versions:
            raise SystemExit(f"kernels: no linux-image-amd64 {series}.x in the lists")
        best = max(versions, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
        dep = run(["apt-cache", *self.opts, "depends", f"linux-image-amd64={best}"], capture_output=True).stdout
        m = re.search(r"Depends: (linux-image-\S+)", dep)
        if not m:
            raise SystemExit(f"kernels: linux-image-amd64={best} has no image dependency")
        return m.group(1)

    def download(self, package: str, into: str) -> str:
        os.makedirs(into, exist_ok=True)
        have = [f for f in os.listdir(into) if f.startswith(package + "_") and f.endswith(".deb")]
        if not have:
            log(f"downloading {package}")
            run(["apt-get", *self.opts, "-qq", "download", package], cwd=into)
            have = [f for f in os.listdir(into) if f.startswith(package + "_") and f.endswith(".deb")]
        return os.path.join(into, sorted(have)[-1])


def make_rootfs(cache: str, mirror: str) -> str:
    root = os.path.join(cache, "rootfs")
    if os.path.exists(os.path.join(root, ".socklb-complete")):
        return root
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap {ROOTFS_SUITE} (once; cached in {root})")
    run(["nice", "debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", ROOTFS_SUITE, tmp, mirror])
    open(os.path.join(tmp, ".socklb-complete"), "w").close()
    os.replace(tmp, root)
    return root


def build_socklb(root: str) -> None:
    """Copy the working tree into the root filesystem and pip install it there."""
    dst = os.path.join(root, "socklb")
    log("building socklb inside the root filesystem (chroot)")
    os.makedirs(dst, exist_ok=True)
    run(
        [
            "rsync", "-a", "--delete",
            "--exclude", ".venv", "--exclude", "build", "--exclude", ".git", "--exclude", "*.egg-info",
            "--exclude", "__pycache__", "--exclude", ".mypy_cache", "--exclude", ".ruff_cache",
            REPO + "/", dst + "/",
        ]
    )  # fmt: skip
    shutil.copy("/etc/resolv.conf", os.path.join(root, "etc/resolv.conf"))
    # The host's CA bundle: pip in the chroot trusts what the host trusts.
    ca = os.path.join(root, "etc/ssl/certs/socklb-host-ca.crt")
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", ca)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "PIP_CERT": "/etc/ssl/certs/socklb-host-ca.crt"}
    env.update({k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")})
    mounts = [("proc", "proc"), ("sysfs", "sys"), ("devtmpfs", "dev")]
    done = []
    try:
        for fs, where in mounts:
            run(["mount", "-t", fs, fs, os.path.join(root, where)])
            done.append(os.path.join(root, where))
        script = (
            "set -e; cd /socklb; [ -x .venv/bin/python ] || python3 -m venv .venv; "
            ".venv/bin/python -m pip install -q --disable-pip-version-check '.[dev]'"
        )
        run(["nice", "chroot", root, "/bin/sh", "-c", script], env=env)
    finally:
        for d in reversed(done):
            subprocess.run(["umount", "-l", d], check=False)


@dataclass
class Kernel:
    series: str
    package: str
    release: str  # uname -r
    vmlinuz: str
    initrd: str


def prepare_kernel(cache: str, root: str, series: str, deb: str, package: str) -> Kernel:
    """Extract the kernel, give the root filesystem its modules, make an initramfs."""
    release = package[len("linux-image-") :]
    kdir = os.path.join(cache, "kernels", release)
    # Merged /usr (trixie): the modules are under usr/lib/modules.
    base = os.path.join(kdir, "usr") if os.path.isdir(os.path.join(kdir, "usr/lib/modules")) else kdir
    if not os.path.exists(os.path.join(kdir, ".complete")):
        shutil.rmtree(kdir, ignore_errors=True)
        os.makedirs(kdir)
        run(["dpkg-deb", "-x", deb, kdir])
        base = os.path.join(kdir, "usr") if os.path.isdir(os.path.join(kdir, "usr/lib/modules")) else kdir
        run(["depmod", "-b", base, release])
        open(os.path.join(kdir, ".complete"), "w").close()
    mods = os.path.join(root, "lib/modules", release)
    if not os.path.isdir(mods):
        shutil.copytree(os.path.join(base, "lib/modules", release), mods, symlinks=True)
        run(["depmod", "-b", root, release])
    initrd = os.path.join(kdir, "initrd.cpio")
    if not os.path.exists(initrd):
        make_initrd(base, release, initrd)
    return Kernel(series, package, release, os.path.join(kdir, "boot", f"vmlinuz-{release}"), initrd)


INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /$m || echo "initrd: insmod $m failed"; done
mkdir -p /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose rootfs /newroot ||
  { echo "initrd: no 9p root"; sleep 2; poweroff -f; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /socklb/kernels/guest.sh
"""


def make_initrd(kdir: str, release: str, out: str) -> None:
    work = out + ".d"
    shutil.rmtree(work, ignore_errors=True)
    for d in ("bin", "proc", "sys", "dev", "newroot", "mods"):
        os.makedirs(os.path.join(work, d))
    shutil.copy(shutil.which("busybox") or "/bin/busybox", os.path.join(work, "bin/busybox"))
    order: List[str] = []
    for mod in INITRD_MODULES:
        r = subprocess.run(
            ["modprobe", "-d", kdir, "-S", release, "--show-depends", mod], capture_output=True, text=True
        )
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                src = parts[1]
                if not src.startswith(kdir):
                    src = kdir + src
                name = os.path.basename(src)
                for ext in (".xz", ".zst", ".gz"):
                    if name.endswith(ext):
                        name = name[: -len(ext)]
                rel = f"mods/{name}"
                if rel in order:
                    continue
                dst = os.path.join(work, rel)
                if src.endswith(".xz"):
                    with open(dst, "wb") as f:
                        run(["xz", "-dc", src], stdout=f)
                elif src.endswith(".zst"):
                    with open(dst, "wb") as f:
                        run(["zstd", "-dc", src], stdout=f)
                else:
                    shutil.copy(src, dst)
                order.append(rel)
    with open(os.path.join(work, "modules.order"), "w", encoding="ascii") as f:
        f.write("\n".join(order) + "\n")
    with open(os.path.join(work, "init"), "w", encoding="ascii") as f:
        f.write(INIT)
    os.chmod(os.path.join(work, "init"), 0o755)
    files = run(["find", ".", "-print0"], cwd=work, capture_output=True).stdout
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=work, input=files.encode(), stdout=f, check=True
        )
    shutil.rmtree(work)


@dataclass
class Result:
    kernel: str
    boots: str = "no"
    demo: str = "-"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    missing: List[str] = field(default_factory=list)
    note: str = ""


def qemu_cmd(k: Kernel, root: str, accel: str, console: str, memory: str) -> List[str]:
    return [
        "nice", "-n", "10", "qemu-system-x86_64",
        "-accel", accel, "-cpu", "max" if accel == "tcg" else "host",
        "-smp", "1", "-m", memory,
        "-nic", "none", "-nographic", "-no-reboot",
        "-serial", f"file:{console}", "-monitor", "none",
        "-kernel", k.vmlinuz, "-initrd", k.initrd,
        "-append", "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=4",
        "-virtfs", f"local,path={root},mount_tag=rootfs,security_model=passthrough,multidevs=remap,id=rootfs",
    ]  # fmt: skip


def boot(k: Kernel, root: str, accel: str, out: str, timeout: float, memory: str, until: Optional[str] = None) -> bool:
    """Boot once; True if the guest finished (or printed ``until``) in time."""
    console = os.path.join(out, f"console-{accel}.log")
    p = subprocess.Popen(qemu_cmd(k, root, accel, console, memory), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                return True
            if until:
                try:
                    if until in open(console, encoding="utf-8", errors="replace").read():
                        return True
                except OSError:
                    pass
            time.sleep(2)
        return False
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def choose_accel(k: Kernel, root: str, out: str, memory: str) -> str:
    """KVM if the kernel gets to user space there within a minute, else TCG
    (stock kernels crash early under a nested shadow-paging hypervisor)."""
    if not os.path.exists("/dev/kvm"):
        return "tcg"
    with open(os.path.join(root, "socklb-kernels-probe"), "w", encoding="ascii") as f:
        f.write("1\n")
    try:
        ok = boot(k, root, "kvm", out, 90, memory, until="socklb-guest: up")
    finally:
        os.unlink(os.path.join(root, "socklb-kernels-probe"))
    log(f"kvm boot check: {'passed' if ok else 'failed, using tcg'}")
    return (
        "kvm"
        if ok and "socklb-guest: up" in open(os.path.join(out, "console-kvm.log"), errors="replace").read()
        else "tcg"
    )


def collect(res_dir: str, res: Result) -> None:
    def read(name: str) -> str:
        try:
            return open(os.path.join(res_dir, name), encoding="utf-8", errors="replace").read()
        except OSError:
            return ""

    if read("up"):
        res.boots = "yes"
    demo, rc = read("demo.out"), read("demo.rc").strip()
    if rc:
        runs = [
            (int(n), int(f)) for n, f in re.findall(r"^(\d+) connections to \S+ in [\d.]+ s, (\d+) failed", demo, re.M)
        ]
        total = sum(n for n, _ in runs)
        shown = f" {total - sum(f for _, f in runs)}/{total}" if runs else ""
        res.demo = ("ok" if rc == "0" else f"failed ({rc})") + shown
    try:
        suite = ET.parse(os.path.join(res_dir, "junit.xml")).getroot()
        ts = suite if suite.tag == "testsuite" else suite.find("testsuite")
        if ts is not None:
            total = int(ts.get("tests", 0))
            res.failed = int(ts.get("failures", 0)) + int(ts.get("errors", 0))
            res.skipped = int(ts.get("skipped", 0))
            res.passed = total - res.failed - res.skipped
    except (OSError, ET.ParseError):
        res.note = res.note or "no test results"
    try:
        doc = json.loads(read("doctor.json"))
        res.missing = [f"{f['name']} ({f['kernel']})" for f in doc["features"] if f["present"] is False]
    except (ValueError, KeyError):
        pass


def table(rows: List[Result]) -> str:
    head = ["KERNEL", "BOOTS", "DEMO", "PASSED", "FAILED", "SKIPPED", "FEATURES MISSING"]
    body = [
        [r.kernel, r.boots, r.demo, str(r.passed), str(r.failed), str(r.skipped), ", ".join(r.missing) or "none"]
        + ([r.note] if r.note else [])
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body] if i < len(x)) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(widths[i]) if i < len(widths) else c for i, c in enumerate(row)).rstrip()
        for row in [head, *body]
    )


def report(cache: str, series: Sequence[str]) -> int:
    """The table of the results kept from the last run of each series."""
    rows = []
    runs = os.path.join(cache, "runs")
    for s in series:
        for release in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
            if release.startswith(s + ".") and re.match(rf"{re.escape(s)}\.\d+[-+]", release):
                res = Result(release)
                collect(os.path.join(runs, release, "results"), res)
                rows.append(res)
    print(table(rows))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="./run kernels", description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("series", nargs="*", default=list(SUITES), help=f"kernel series (default: {' '.join(SUITES)})")
    ap.add_argument("--cache", default=os.environ.get("SOCKLB_KERNELS_CACHE", "/var/cache/socklb-kernels"))
    ap.add_argument(
        "--tests",
        default=" ".join(FAST_TESTS),
        help="pytest arguments in the guest (default: a fast subset; 'tests' for all)",
    )
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per boot (default 3600)")
    ap.add_argument("--memory", default="3072", help="guest memory in MiB (default 3072)")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    ap.add_argument("--no-build", action="store_true", help="reuse the socklb already built in the root filesystem")
    ap.add_argument("--report", action="store_true", help="only print the table of the last run's results")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like an exception: the chroot's mounts and qemu go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        raise SystemExit("kernels: run as root (debootstrap, chroot, 9p passthrough)")
    for s in args.series:
        if s not in SUITES:
            raise SystemExit(f"kernels: unknown series {s} (known: {', '.join(SUITES)})")
    os.makedirs(args.cache, exist_ok=True)
    if args.report:
        return report(args.cache, args.series)
    apt = Apt(args.cache)
    apt.update()
    root = make_rootfs(args.cache, mirrors()["archive"])
    if not args.no_build:
        build_socklb(root)
    results: List[Result] = []
    accel = None if args.accel == "auto" else args.accel
    for series in args.series:
        package = apt.kernel_package(series)
        deb = apt.download(package, os.path.join(args.cache, "debs"))
        k = prepare_kernel(args.cache, root, series, deb, package)
        res = Result(k.release)
        out = os.path.join(args.cache, "runs", k.release)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        res_dir = os.path.join(root, "socklb-results")
        shutil.rmtree(res_dir, ignore_errors=True)
        os.makedirs(res_dir)
        with open(os.path.join(root, "socklb-kernels-tests"), "w", encoding="utf-8") as f:
            f.write(args.tests + "\n")
        if accel is None:
            accel = choose_accel(k, root, out, args.memory)
            shutil.rmtree(res_dir, ignore_errors=True)
            os.makedirs(res_dir)
        log(f"booting {k.release} ({accel}, timeout {args.timeout:.0f}s); console: {out}/console-{accel}.log")
        t0 = time.monotonic()
        finished = boot(k, root, accel, out, args.timeout, args.memory)
        if not finished:
            res.note = f"timed out after {args.timeout:.0f}s"
        collect(res_dir, res)
        res.note = (res.note + f" {time.monotonic() - t0:.0f}s {accel}").strip()
        if os.path.isdir(res_dir):
            shutil.copytree(res_dir, os.path.join(out, "results"), dirs_exist_ok=True)
        results.append(res)
        log(f"{k.release}: {res}")
    print(table(results))
    return 0 if all(r.boots == "yes" and r.failed == 0 and r.demo.startswith("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
