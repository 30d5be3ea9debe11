"""Build the socklb native extension (``socklb._native._lib``).

Runs on its own (``python csrc/build_ffi.py`` builds in place under build/)
and as the ``cffi_modules`` entry of setup.py.  Steps:

1. compile ``socklb.bpf.c`` and ``socklb_iter.bpf.c`` with clang for the BPF
   target, each in two variants (see compile_bpf);
2. generate a libbpf skeleton of each object with ``bpftool gen skeleton``
   (build/csrc-gen/*.skel.h): the object embedded in the extension (so it
   never reads a loose file), its maps, programs and ``.rodata`` as typed
   fields;
3. declare the shared map layouts (``socklb_maps.h``), the loader API
   (``loader.h``) and the row packer (``rows.h``) to cffi, and compile the
   native core (``SOURCES``, against libbpf).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GEN = os.path.join(ROOT, "build", "csrc-gen")

_DEFINE = re.compile(r"^#define\s+\w+\s+-?\d+\s*$")


def _cdef_text(path: str) -> str:
    """The file with every preprocessor line dropped except integer #defines."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            s = line.strip()
            if s.startswith("#") and not _DEFINE.match(s):
                continue
            out.append(line)
    return "".join(out)


def _multiarch() -> str:
    arch = sysconfig.get_config_var("MULTIARCH")
    if arch:
        return str(arch)
    try:
        return subprocess.run(["gcc", "-print-multiarch"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _find_clang() -> str:
    clang = os.environ.get("CLANG") or shutil.which("clang")
    if not clang:
        for v in range(20, 10, -1):
            clang = shutil.which(f"clang-{v}")
            if clang:
                break
    if not clang:
        sys.exit("socklb: clang is needed to compile the BPF programs (apt-get install clang)")
    return clang


def _clang_bpf(src: str, obj: str, extra: list[str]) -> None:
    cmd = [_find_clang(), "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", HERE, *extra]
    cmd += ["-c", os.path.join(HERE, src), "-o", obj]
    subprocess.run(cmd, check=True)


def _find_bpftool() -> str:
    tool = os.environ.get("BPFTOOL") or shutil.which("bpftool") or shutil.which("bpftool", path="/usr/sbin:/sbin")
    if not tool:
        sys.exit("socklb: bpftool is needed to generate the BPF skeletons (apt-get install bpftool)")
    return tool


def _write(path: str, text: str) -> None:
    """Replace path's content, leaving its time alone when it is the same
    (what depends on it is not rebuilt for nothing)."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _skeleton(obj: str, name: str) -> str:
    """``bpftool gen skeleton`` of obj as struct ``name``; returns its text."""
    text = subprocess.run(
        [_find_bpftool(), "gen", "skeleton", obj, "name", name], check=True, capture_output=True, text=True
    ).stdout
    _write(os.path.join(GEN, f"{name}.skel.h"), text)
    return text


def _layout(text: str, name: str) -> str:
    """The struct of a skeleton (maps, programs, links, .rodata), its name
    taken out: what two variants of one object must share."""
    m = re.search(rf"^struct {name} {{\n.*?^}};", text, re.S | re.M)
    if not m:
        sys.exit(f"socklb: no struct {name} in its skeleton")
    return m.group(0).replace(name, "NAME")


def compile_bpf() -> str:
    """Compile the BPF objects and generate their skeletons; returns their directory.

    Each object is built twice, and the loader picks by the kernel's features
    (features.py): the datapath with and without bpf_set_retval (5.18), the
    socket iterators in full and counting only (without bpf_sock_destroy,
    6.5).  The two datapath variants have the same maps, programs and
    ``.rodata``: the loader opens either through ``socklb_bpf``'s skeleton
    (checked here).  The iterators use the CO-RE type set of
    socklb_iter_types.h, not the build machine's BTF, so they build anywhere;
    only a clang that cannot compile them leaves them out (SOCKLB_HAVE_ITER
    0), never the install."""
    os.makedirs(GEN, exist_ok=True)
    arch = _multiarch()
    inc = ["-I", f"/usr/include/{arch}"] if arch else []
    layouts = set()
    for name, extra in (("socklb_bpf", []), ("socklb_noretval_bpf", ["-DSOCKLB_NO_SET_RETVAL"])):
        obj = os.path.join(GEN, f"{name}.o")
        _clang_bpf("socklb.bpf.c", obj, inc + extra)
        layouts.add(_layout(_skeleton(obj, name), name))
    if len(layouts) != 1:
        sys.exit("socklb: the datapath built without bpf_set_retval has other maps, programs or .rodata")
    have_iter = 0
    if os.environ.get("SOCKLB_NO_ITER") != "1":
        try:
            for name, extra in (("socklb_iter", []), ("socklb_iter_count", ["-DSOCKLB_ITER_COUNT_ONLY"])):
                iobj = os.path.join(GEN, f"{name}.o")
                _clang_bpf("socklb_iter.bpf.c", iobj, inc + extra)
                _skeleton(iobj, name)
            have_iter = 1
        except subprocess.CalledProcessError:
            print("socklb: socket iterators left out (their BPF object did not compile)", file=sys.stderr)
    _write(
        os.path.join(GEN, "socklb_build.h"),
        "/* Generated by csrc/build_ffi.py: do not edit. */\n"
        "/* The socket iterators' skeletons (socklb_iter*.skel.h) were generated. */\n"
        f"#define SOCKLB_HAVE_ITER {have_iter}\n",
    )
    return GEN


# The native core, one file per job (see the README, "How the code is laid out").
SOURCES = ["loader.c", "log.c", "mapio.c", "terminate.c", "maglev.c", "probe.c", "trace.c", "rows.c", "reclaim.c"]
HEADERS = ["socklb_maps.h", "loader.h", "rows.h", "internal.h", "features.def"]

ffibuilder = FFI()
ffibuilder.cdef(
    "typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;\n"
    + _cdef_text(os.path.join(HERE, "socklb_maps.h"))
    + _cdef_text(os.path.join(HERE, "loader.h"))
    + _cdef_text(os.path.join(HERE, "rows.h"))
)
_gen = compile_bpf()
ffibuilder.set_source(
    "socklb._native._lib",
    '#include <stdint.h>\n#include <linux/types.h>\n#include "socklb_maps.h"\n#include "loader.h"\n#include "rows.h"\n',
    sources=[os.path.join(HERE, f) for f in SOURCES],
    include_dirs=[HERE, _gen],
    # Rebuilt whenever the skeletons (the embedded BPF objects) or the
    # shared headers change, not only when a .c file does.
    depends=[os.path.join(_gen, f) for f in sorted(os.listdir(_gen)) if f.endswith(".h")]
    + [os.path.join(HERE, f) for f in HEADERS],
    libraries=["bpf"],
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
