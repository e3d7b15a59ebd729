"""Build the e2e guest: a Debian bookworm kernel and a busybox initramfs.

Everything comes from Debian packages: the generic kernel package
``linux-image-6.1.*-amd64`` (fetched with ``apt-get download``, never
installed; the ``cloud`` flavour has no 9p), ``busybox-static`` for the
userland, ``kmod`` for ``depmod`` and gcc for the small xattr tool in
``guest/e2e-xattr.c`` (Debian's busybox has no setfattr/getfattr).

Results are cached under ``tests/e2e/.cache/`` (git-ignored):

* ``kernel/<package>_<version>/``: ``vmlinux`` (uncompressed, PVH-bootable:
  QEMU enters it directly, which saves the bzImage decompression under TCG),
  ``vmlinuz``, the needed ``.ko`` files and their load order;
* ``tools/e2e-xattr-<hash>``: the static xattr tool, keyed by its source;
* ``initramfs-<hash>.cpio``: keyed by the kernel package version, busybox,
  the tool and the guest scripts, so editing ``guest/checks.sh`` rebuilds it.

Usage: ``python -m tests.e2e.build_guest`` (from the repository root) builds
or reuses the cache and prints what it produced.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST_DIR = HERE / "guest"
DEFAULT_CACHE = HERE / ".cache"

BUSYBOX = Path("/bin/busybox")
# The modules the guest needs; their dependencies come from modules.dep.
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p")
# Only these parts of the 70 MB package are unpacked.
MODULE_DIRS = (
    "kernel/drivers/virtio",
    "kernel/fs/9p",
    "kernel/fs/netfs",
    "kernel/fs/fscache",
    "kernel/net/9p",
)
KERNEL_CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=3"
# Bump when the layout of the initramfs changes in a way the inputs don't show.
INITRAMFS_FORMAT = "2"

INSTALL_HINT = (
    "install the e2e prerequisites as root: "
    "apt-get update && apt-get install -y qemu-system-x86 qemu-system-common "
    "busybox-static kmod cpio gcc libc6-dev (or run scripts/bootstrap)"
)


class GuestBuildError(RuntimeError):
    """The guest cannot be built here; the message says what is missing."""


@dataclass(frozen=True)
class KernelBuild:
    package: str
    version: str
    release: str  # `uname -r` of the guest
    directory: Path

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def modules(self) -> list[str]:
        """Module file names in load order."""
        return (self.directory / "modules" / "order").read_text().split()


@dataclass(frozen=True)
class GuestImage:
    kernel: Path  # PVH vmlinux; `kernel_compressed` is the bzImage alternative
    kernel_compressed: Path
    initrd: Path
    cmdline: str
    kernel_package: str
    kernel_version: str
    workloads: dict[str, tuple[str, ...]]  # workload -> its check names, in order

    @property
    def check_names(self) -> tuple[str, ...]:
        return self.workloads["checks"]


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError as exc:
        raise GuestBuildError(f"{argv[0]} not found; {INSTALL_HINT}") from exc


def _unique_tmp(final: Path) -> Path:
    """A temporary name beside ``final``, distinct per process: renamed into place when done."""
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package]).stdout
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _find_kernel_package() -> tuple[str, str] | None:
    """(name, version) of the current generic 6.1 kernel, from apt's lists."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    names = re.findall(r"Depends:\s*(linux-image-6\.1\.\S+-amd64)\b", out)
    if not names:
        # The metapackage may point elsewhere (backports); fall back to a search.
        out = _run(
            ["apt-cache", "search", "--names-only", r"^linux-image-6\.1\.[0-9.-]+-amd64$"]
        ).stdout
        names = sorted(
            (line.split()[0] for line in out.splitlines() if line.strip()),
            key=lambda n: [int(x) for x in re.findall(r"\d+", n)],
        )[-1:]
    for name in names:
        version = _candidate(name)
        if version:
            return name, version
    return None


def _cached_kernels(cache: Path) -> list[Path]:
    root = cache / "kernel"
    if not root.is_dir():
        return []
    return sorted(
        (d for d in root.iterdir() if (d / "complete").exists()), key=lambda d: d.stat().st_mtime
    )


def _load_kernel_dir(directory: Path) -> KernelBuild:
    package, version = directory.name.split("_", 1)
    release = (directory / "release").read_text().strip()
    return KernelBuild(package, version, release, directory)


def _extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the ELF vmlinux out of a bzImage (Debian's is XZ-compressed).

    The x86 boot protocol header gives the payload's place: ``payload_offset``
    and ``payload_length`` at 0x248, relative to the protected-mode code that
    starts after ``(setup_sects + 1) * 512`` bytes.
    """
    setup_sects = bzimage[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[start + offset : start + offset + length]
    if not payload.startswith(b"\xfd7zXZ\x00"):
        raise GuestBuildError(f"kernel payload is not XZ (starts {payload[:6]!r})")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elf = dec.decompress(payload)
    if not elf.startswith(b"\x7fELF"):
        raise GuestBuildError("decompressed kernel payload is not an ELF file")
    return elf


def _load_order(modules_dep: str, wanted: Iterable[str]) -> list[str]:
    """Dependencies before dependants, from depmod's modules.dep."""
    deps: dict[str, list[str]] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko"): p for p in deps}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestBuildError(f"module {name} is not in the kernel package")
        visit(by_name[name])
    return order


def fetch_kernel(cache: Path = DEFAULT_CACHE, *, log: bool = True) -> KernelBuild:
    """Download and unpack the current generic kernel, or reuse the cached one."""
    found = _find_kernel_package()
    if found is None and os.geteuid() == 0:
        # A fresh machine may have empty apt lists.
        _run(["apt-get", "update", "-qq"])
        found = _find_kernel_package()
    if found is None:
        cached = _cached_kernels(cache)
        if cached:
            return _load_kernel_dir(cached[-1])
        raise GuestBuildError(
            "apt-cache knows no linux-image-6.1.*-amd64 package; run `apt-get update` as root "
            "(Debian bookworm's main archive is needed); " + INSTALL_HINT
        )
    package, version = found
    directory = cache / "kernel" / f"{package}_{version}"
    if (directory / "complete").exists():
        return _load_kernel_dir(directory)

    t0 = time.monotonic()
    (cache / "kernel").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache / "kernel", prefix=".build-") as tmp_name:
        tmp = Path(tmp_name)
        # _apt cannot write into a root-only temp dir; it would only warn, but the
        # sandbox user is pointless for a download we unpack ourselves.
        res = _run(
            ["apt-get", "download", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            cwd=tmp,
        )
        debs = list(tmp.glob("*.deb"))
        if res.returncode != 0 or not debs:
            raise GuestBuildError(
                f"apt-get download {package}={version} failed: {res.stderr.strip()}; {INSTALL_HINT}"
            )
        root = tmp / "root"
        root.mkdir()
        # dpkg-deb -x unpacks 400 MB; only the kernel and five module dirs are needed.
        members = ["./boot/vmlinuz-*", "./lib/modules/*/modules.*"] + [
            f"./lib/modules/*/{d}/*" for d in MODULE_DIRS
        ]
        script = f"dpkg-deb --fsys-tarfile {debs[0]} | tar -x -C {root} --wildcards " + " ".join(
            f"'{m}'" for m in members
        )
        res = _run(["sh", "-c", script])
        if res.returncode != 0:
            raise GuestBuildError(f"unpacking {debs[0].name} failed: {res.stderr.strip()}")
        (release,) = [p.name for p in (root / "lib" / "modules").iterdir()]
        # Debian ships no modules.dep (the postinst runs depmod); make one.
        res = _run(["depmod", "-b", str(root), release])
        if res.returncode != 0:
            raise GuestBuildError(f"depmod failed: {res.stderr.strip()}; {INSTALL_HINT}")
        moddir = root / "lib" / "modules" / release
        order = _load_order((moddir / "modules.dep").read_text(), WANTED_MODULES)

        out = tmp / "out"
        (out / "modules").mkdir(parents=True)
        for rel in order:
            src = moddir / rel
            if src.suffix != ".ko":
                # Bookworm's kernels use CONFIG_MODULE_COMPRESS_NONE; busybox insmod
                # would need the module uncompressed anyway.
                raise GuestBuildError(f"unexpected compressed module {rel}")
            shutil.copyfile(src, out / "modules" / src.name)
        (out / "modules" / "order").write_text("".join(Path(r).name + "\n" for r in order))
        bzimage = (root / "boot" / f"vmlinuz-{release}").read_bytes()
        (out / "vmlinuz").write_bytes(bzimage)
        (out / "vmlinux").write_bytes(_extract_vmlinux(bzimage))
        (out / "release").write_text(release + "\n")
        (out / "complete").write_text("")
        for p in [out, *out.rglob("*")]:
            # QEMU runs as nobody and must read these.
            p.chmod(0o755 if p.is_dir() else 0o644)
        try:
            out.rename(directory)
        except OSError:
            # Another test process (several may share a checkout) got there first.
            if not (directory / "complete").exists():
                raise
    if log:
        print(
            f"build_guest: fetched {package} {version} in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
    return _load_kernel_dir(directory)


def build_xattr_tool(cache: Path = DEFAULT_CACHE) -> Path:
    src = GUEST_DIR / "e2e-xattr.c"
    key = _sha256(src.read_bytes())[:16]
    out = cache / "tools" / f"e2e-xattr-{key}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise GuestBuildError(f"no C compiler for the guest's xattr tool; {INSTALL_HINT}")
    tmp = _unique_tmp(out)
    res = _run(
        [cc, "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(src)]
    )
    if res.returncode != 0:
        raise GuestBuildError(
            f"compiling {src.name} failed (needs gcc and libc6-dev's libc.a): {res.stderr.strip()}"
        )
    tmp.chmod(0o755)
    tmp.rename(out)
    return out


class _Newc:
    """A minimal writer for the kernel's initramfs format (cpio "newc").

    Written here rather than driving cpio(1) so the archive can hold
    /dev/console and root-owned files without a staging tree, and so the
    same inputs always give the same bytes.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._parts.append(blob)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = b"".join(self._parts)
        return data + b"\0" * (-len(data) % 512)


#: The guest's workloads: guest/<name>.sh, picked with e2e_workload=<name>.
WORKLOADS = ("checks", "setgid")


def check_names(workload: str = "checks") -> tuple[str, ...]:
    """The checks a workload promises, in order (from its `check` lines)."""
    text = (GUEST_DIR / f"{workload}.sh").read_text()
    return tuple(re.findall(r"^check (\S+) ", text, flags=re.MULTILINE))


def _guest_scripts() -> list[str]:
    return ["lib.sh", *(f"{w}.sh" for w in WORKLOADS)]


def build_initramfs(kernel: KernelBuild, cache: Path = DEFAULT_CACHE) -> Path:
    if not BUSYBOX.exists():
        raise GuestBuildError(f"{BUSYBOX} is missing; {INSTALL_HINT}")
    tool = build_xattr_tool(cache)
    busybox = BUSYBOX.read_bytes()
    init = (GUEST_DIR / "init").read_bytes()
    scripts = {name: (GUEST_DIR / name).read_bytes() for name in _guest_scripts()}
    tool_bytes = tool.read_bytes()
    key = _sha256(
        INITRAMFS_FORMAT.encode(),
        f"{kernel.package}_{kernel.version}".encode(),
        busybox,
        init,
        *(part for name, data in sorted(scripts.items()) for part in (name.encode(), data)),
        tool_bytes,
    )[:16]
    out = cache / f"initramfs-{key}.cpio"
    if out.exists():
        return out

    a = _Newc()
    for d in ("bin", "dev", "etc", "mnt", "proc", "sys", "tmp", "root", "modules", "workloads"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)
    a.chardev("dev/null", 1, 3, 0o666)
    a.file("bin/busybox", busybox, 0o755)
    a.symlink("bin/sh", "busybox")
    a.file("bin/e2e-xattr", tool_bytes, 0o755)
    a.file("init", init, 0o755)
    a.file("lib.sh", scripts.pop("lib.sh"))
    for name, data in sorted(scripts.items()):
        a.file(f"workloads/{name}", data, 0o755)
    # The non-root user of the nonroot_* checks; busybox su reads these files.
    a.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ntester:x:1000:1000::/tmp:/bin/sh\n")
    a.file("etc/group", b"root:x:0:\ntester:x:1000:\n")
    for name in kernel.modules:
        a.file(f"modules/{name}", (kernel.directory / "modules" / name).read_bytes())
    a.file("modules/order", (kernel.directory / "modules" / "order").read_bytes())

    tmp = _unique_tmp(out)
    tmp.write_bytes(a.finish())
    tmp.chmod(0o644)
    tmp.rename(out)
    # Builds for other versions of the guest scripts are 4 MB each and cheap to
    # redo; a day's grace leaves alone any that a concurrent run is about to boot.
    for old in cache.glob("initramfs-*.cpio"):
        with contextlib.suppress(OSError):
            if old != out and time.time() - old.stat().st_mtime > 86400:
                old.unlink()
    return out


def ensure_guest(cache: Path = DEFAULT_CACHE) -> GuestImage:
    """Build what is missing and return the paths QEMU needs."""
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    kernel = fetch_kernel(cache)
    initrd = build_initramfs(kernel, cache)
    return GuestImage(
        kernel=kernel.vmlinux,
        kernel_compressed=kernel.vmlinuz,
        initrd=initrd,
        cmdline=KERNEL_CMDLINE,
        kernel_package=kernel.package,
        kernel_version=kernel.version,
        workloads={w: check_names(w) for w in WORKLOADS},
    )


def main() -> int:
    t0 = time.monotonic()
    try:
        image = ensure_guest()
    except GuestBuildError as exc:
        print(f"build_guest: {exc}", file=sys.stderr)
        return 1
    print(f"kernel package: {image.kernel_package} {image.kernel_version}")
    print(f"kernel:         {image.kernel}")
    print(f"initrd:         {image.initrd}")
    print(f"checks:         {len(image.check_names)}")
    print(f"took:           {time.monotonic() - t0:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
