"""Boot the e2e guest against a proxy helper and collect what happened.

One run: a fresh export directory, the helper started as root on it, QEMU
started **unprivileged** (nobody:nogroup, no supplementary groups) with a
``-fsdev proxy`` device, the guest from ``build_guest`` running its fixed
workload, then the helper's exit and the host-side state of the export.

Two ways to connect QEMU and the helper, as libvirt and the helper's manual
allow:

* ``fd``: a socketpair; the helper gets one end (``-f FD``), QEMU the other
  (``-fsdev proxy,sock_fd=N``).
* ``socket``: the helper binds a named socket (``-s PATH -u UID -g GID``),
  owned by QEMU's uid so that QEMU can connect (``-fsdev proxy,socket=PATH``).

The helper is an argv prefix; the harness appends the helper options, so the
same runs drive QEMU's ``/usr/lib/qemu/virtfs-proxy-helper`` and ours.

Rootless (issue 14): with ``user=(UID, GID)`` (``--user``) the helper *and*
QEMU run as that ordinary user, no capability, no supplementary group: the
export (and the named socket's directory) are the user's, the socket is
given to the user itself, and our helper serves rootless (its uid is not 0).
The helper command must be one the user can execute. The guest learns from
``e2e_setid=0|1`` whether set-id bits survive a chmod (a rootless helper
clears them unless ``--allow-setid``).

Usage from the repository root::

    python -m tests.e2e.harness [--helper qemu|ours|'CMD ...'] [--mode fd|socket]
                                [--workload checks|setgid] [--trace FILE] [--console]

The guest learns from ``e2e_devnodes=0|1`` on its kernel command line whether
the helper makes device nodes (:func:`makes_device_nodes`), and expects its
``mknod c`` to work or to fail with EPERM accordingly.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import selectors
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from virtfs_proto import launcher

from .build_guest import DEFAULT_CACHE, INSTALL_HINT, WORKLOADS, GuestImage, ensure_guest

QEMU = "qemu-system-x86_64"
QEMU_HELPER = (launcher.QEMU_HELPER,)
# QEMU runs as this user; the named socket is handed to it with -u/-g.
QEMU_UID = 65534
QEMU_GID = 65534
BOOT_TIMEOUT = 120.0
TRACER = (sys.executable, "-m", "virtfs_proto.cli", "trace")

CHECK_RE = re.compile(r"^CHECK (\S+) (PASS|FAIL)(?: (.*))?$")


def our_helper() -> tuple[str, ...]:
    """The command that starts our helper (the entry point tests/server uses too)."""
    return (sys.executable, "-m", "virtfs_proto.server")


#: our helper's option that lets T_MKNOD make device nodes (refused by default)
ALLOW_DEVICE_NODES = "--allow-device-nodes"


#: our helper's option that keeps set-id bits when it runs rootless
ALLOW_SETID = "--allow-setid"


def is_ours(helper: Sequence[str]) -> bool:
    """Whether ``helper`` is our helper, started by any interpreter."""
    return tuple(helper[1:3]) == our_helper()[1:3]


def makes_device_nodes(helper: Sequence[str]) -> bool:
    """Whether ``helper`` makes the device nodes a guest root asks for: ours only
    with ``--allow-device-nodes``; any other (QEMU's, the reference) does."""
    return not is_ours(helper) or ALLOW_DEVICE_NODES in helper


def keeps_setid(helper: Sequence[str], user: tuple[int, int] | None) -> bool:
    """Whether a chmod's set-id bits survive: not with our helper run rootless
    (by a user) without ``--allow-setid``."""
    return user is None or not is_ours(helper) or ALLOW_SETID in helper


class HarnessError(RuntimeError):
    """The run could not be set up (missing QEMU, helper would not start, ...)."""


@dataclass
class GuestRun:
    helper: tuple[str, ...]
    mode: str
    checks: dict[str, tuple[str, str]]  # name -> (PASS|FAIL, detail)
    expected: tuple[str, ...]
    console: str
    qemu_rc: int | None
    helper_rc: int | None
    helper_stderr: str
    state: dict[str, dict[str, object]]
    wall: float  # QEMU start to QEMU exit, seconds
    boot: float | None  # QEMU start to E2E-BEGIN (modules loaded)
    workload: float | None  # E2E-BEGIN to E2E-END, host wall clock
    #: user+system CPU seconds of the helper process (with a tracer: tracer and helper);
    #: unlike wall times, barely moved by other load on the machine
    helper_cpu: float | None = None
    #: QEMU's Uid/Gid/Groups/CapEff lines from /proc/PID/status, read while it ran
    qemu_credentials: dict[str, str] = field(default_factory=dict)
    helper_argv: list[str] = field(default_factory=list)
    qemu_argv: list[str] = field(default_factory=list)
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def results(self) -> dict[str, str]:
        """Per expected check: PASS, FAIL or MISSING."""
        return {name: self.checks.get(name, ("MISSING", ""))[0] for name in self.expected}

    @property
    def all_passed(self) -> bool:
        return all(v == "PASS" for v in self.results.values()) and not self.errors

    def summary(self) -> str:
        lines = [
            f"helper {shlex.join(self.helper)} mode={self.mode}: qemu rc={self.qemu_rc} "
            f"helper rc={self.helper_rc} wall={self.wall:.1f}s boot={_fmt(self.boot)} "
            f"workload={_fmt(self.workload)} helper cpu={_fmt(self.helper_cpu)}"
        ]
        for name in self.expected:
            verdict, detail = self.checks.get(name, ("MISSING", ""))
            lines.append(f"  {name:18} {verdict} {detail}".rstrip())
        lines.extend(f"  error: {e}" for e in self.errors)
        return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def require_tools(helper: Sequence[str], *, rootless: bool = False) -> None:
    """Fail loudly, with the install command, when a prerequisite is missing."""
    if shutil.which(QEMU) is None:
        raise HarnessError(f"{QEMU} not found; {INSTALL_HINT}")
    exe = helper[0]
    if shutil.which(exe) is None and not os.access(exe, os.X_OK):
        raise HarnessError(f"helper {exe} not found; {INSTALL_HINT}")
    if os.geteuid() != 0:
        why = "it starts both as the user" if rootless else "the helper needs chroot and caps"
        raise HarnessError(f"the e2e harness must run as root: {why}")


# Files whose mtime the workload sets explicitly (touch_time): their times are
# part of the state; all other times depend on when the run happened.
TIMED_FILES = frozenset({"t/timed"})


def host_state(export: Path) -> dict[str, dict[str, object]]:
    """What the guest left in the export: everything but times and inode numbers."""
    state: dict[str, dict[str, object]] = {}
    paths = [export]
    for dirpath, dirnames, filenames in os.walk(export):
        paths.extend(Path(dirpath) / n for n in dirnames + filenames)
    for path in sorted(paths):
        rel = "." if path == export else str(path.relative_to(export))
        st = os.lstat(path)
        entry: dict[str, object] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        if rel in TIMED_FILES:
            entry["mtime"] = st.st_mtime_ns
            entry["atime"] = st.st_atime_ns
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            entry["nlink"] = st.st_nlink
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
        except OSError:
            names = []
        entry["xattrs"] = {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in names}
        state[rel] = entry
    return state


def _fs_type(path: Path) -> str:
    """statfs(2)'s f_type of path in hex, as `stat -f -c %t` prints it."""
    res = subprocess.run(
        ["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True, check=True
    )
    return res.stdout.strip()


def run_guest(
    helper: Sequence[str],
    mode: str = "fd",
    *,
    image: GuestImage | None = None,
    compressed_kernel: bool = False,
    timeout: float = BOOT_TIMEOUT,
    workdir: Path | None = None,
    keep_export: bool = False,
    trace: Path | None = None,
    workload: str = "checks",
    user: tuple[int, int] | None = None,
) -> GuestRun:
    """Boot the guest once against ``helper`` and return everything observed.

    ``user``: run the helper and QEMU as this uid and gid (rootless), not the
    helper as root and QEMU as nobody.

    With ``trace``, ``virtfs-proto trace`` sits between QEMU and the helper
    (it takes QEMU's side of the connection and starts the helper on a
    socketpair of its own) and writes its JSON Lines there.
    """
    if mode not in ("fd", "socket"):
        raise ValueError(f"mode must be fd or socket, not {mode!r}")
    helper = tuple(helper)
    require_tools(helper, rootless=user is not None)
    if user is not None and trace is not None:
        raise ValueError("a rootless run cannot be traced (the tracer would run as root)")
    qemu_uid, qemu_gid = user or (QEMU_UID, QEMU_GID)
    # the helper's own credentials: root's (none given), or the user's
    as_helper = {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}
    image = image or ensure_guest()
    if workload not in image.workloads:
        raise ValueError(f"unknown workload {workload!r}; there are {sorted(image.workloads)}")
    base = workdir or DEFAULT_CACHE / "runs"
    base.mkdir(parents=True, exist_ok=True)
    # The export lives beside the cache rather than in /tmp: /tmp may be a
    # tmpfs, which has no user xattrs before Linux 6.6.
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=base))
    export = run_dir / "export"
    export.mkdir(mode=0o755)
    helper_log = run_dir / "helper.stderr"
    # sun_path holds 108 bytes, so the named socket goes in a short /tmp path.
    sock_dir = Path(tempfile.mkdtemp(prefix="virtfs-e2e-"))
    sock_dir.chmod(0o755)
    sock_path = sock_dir / "proxy.sock"
    if user is not None:
        # the user's export (and its run directory), where its helper binds the socket
        for d in (run_dir, export, sock_dir):
            os.chown(d, *user)

    kernel = image.kernel_compressed if compressed_kernel else image.kernel
    # QEMU (as nobody) opens kernel and initrd through /dev/fd, so it does not
    # need search permission on every directory above the cache.
    kfd = os.open(kernel, os.O_RDONLY)
    ifd = os.open(image.initrd, os.O_RDONLY)
    qemu_fds = [kfd, ifd]
    helper_proc: subprocess.Popen[bytes] | None = None
    qemu_proc: subprocess.Popen[bytes] | None = None
    qemu_end: socket.socket | None = None
    helper_end: socket.socket | None = None
    errors: list[str] = []
    try:
        with open(helper_log, "wb") as log:
            if mode == "fd":
                qemu_end, helper_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fd = str(helper_end.fileno())
                if trace is None:
                    helper_argv = [*helper, "-p", str(export), "-f", fd, "-n"]
                else:
                    helper_argv = [*TRACER, "-o", str(trace), "--listen-fd", fd, "--", *helper]
                    helper_argv += ["-p", str(export), "-n"]
                helper_proc = subprocess.Popen(
                    helper_argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(helper_end.fileno(),),
                    **as_helper,
                )
                helper_end.close()
                qemu_fds.append(qemu_end.fileno())
                fsdev = f"proxy,id=fs0,sock_fd={qemu_end.fileno()}"
            else:
                owner = ["-u", str(qemu_uid), "-g", str(qemu_gid)]
                if trace is None:
                    helper_argv = [*helper, "-p", str(export), "-s", str(sock_path), *owner, "-n"]
                else:
                    helper_argv = [*TRACER, "-o", str(trace), "--listen", str(sock_path), *owner]
                    helper_argv += ["--", *helper, "-p", str(export), "-n"]
                helper_proc = subprocess.Popen(
                    helper_argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **as_helper
                )
                deadline = time.monotonic() + 10
                while not sock_path.exists():
                    if helper_proc.poll() is not None or time.monotonic() > deadline:
                        raise HarnessError(
                            f"helper did not create {sock_path} (rc={helper_proc.poll()}): "
                            + helper_log.read_text(errors="replace")
                        )
                    time.sleep(0.01)
                fsdev = f"proxy,id=fs0,socket={sock_path}"

            qemu_argv = [
                QEMU,
                "-accel",
                "tcg",
                "-M",
                "pc",
                "-m",
                "256M",
                "-smp",
                "1",
                "-nodefaults",
                "-nographic",
                "-serial",
                "stdio",
                "-no-reboot",
                "-nic",
                "none",
                "-kernel",
                f"/dev/fd/{kfd}",
                "-initrd",
                f"/dev/fd/{ifd}",
                "-append",
                f"{image.cmdline} e2e_fstype={_fs_type(export)} e2e_workload={workload}"
                f" e2e_devnodes={int(makes_device_nodes(helper))}"
                f" e2e_setid={int(keeps_setid(helper, user))}",
                "-fsdev",
                fsdev,
                "-device",
                "virtio-9p-pci,fsdev=fs0,mount_tag=share",
            ]
            t0 = time.monotonic()
            qemu_proc = subprocess.Popen(
                qemu_argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=tuple(qemu_fds),
                # QEMU holds no root powers, as under libvirt; only the helper is
                # privileged (rootless: neither is)
                user=qemu_uid,
                group=qemu_gid,
                extra_groups=[],
            )
            if qemu_end is not None:
                qemu_end.close()
                qemu_end = None
            qemu_creds: dict[str, str] = {}
            console, marks, timed_out = _read_console(qemu_proc, t0, timeout, qemu_creds)
            wall = time.monotonic() - t0
            qemu_rc = qemu_proc.wait()
            helper_rc, helper_cpu = _reap(helper_proc, 10.0)
            if helper_rc is None:
                errors.append("helper did not exit within 10 s of QEMU's exit")
                helper_proc.kill()
                helper_rc, helper_cpu = _reap(helper_proc, None)
    except BaseException:
        if not keep_export:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for fd in (kfd, ifd):
            os.close(fd)
        for s in (qemu_end, helper_end):
            if s is not None:
                s.close()
        for p in (qemu_proc, helper_proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)

    if timed_out:
        errors.append(f"guest did not finish within {timeout:.0f} s")
    if "E2E-END" not in marks:
        errors.append("guest never reached the end of its workload")
    checks: dict[str, tuple[str, str]] = {}
    for line in console.splitlines():
        m = CHECK_RE.match(line.strip())
        if m:
            if m.group(1) in checks:
                errors.append(f"check {m.group(1)} reported twice")
            checks[m.group(1)] = (m.group(2), m.group(3) or "")
        elif line.startswith("E2E-ERROR"):
            errors.append(line.strip())
    expected = image.workloads[workload]
    unexpected = set(checks) - set(expected)
    if unexpected:
        errors.append(f"unexpected checks: {sorted(unexpected)}")
    state = host_state(export)
    run = GuestRun(
        helper=helper,
        mode=mode,
        checks=checks,
        expected=expected,
        console=console,
        qemu_rc=qemu_rc,
        helper_rc=helper_rc,
        helper_stderr=helper_log.read_text(errors="replace"),
        state=state,
        wall=wall,
        boot=marks.get("E2E-BEGIN"),
        workload=(marks["E2E-END"] - marks["E2E-BEGIN"])
        if "E2E-END" in marks and "E2E-BEGIN" in marks
        else None,
        helper_cpu=helper_cpu,
        qemu_credentials=qemu_creds,
        helper_argv=helper_argv,
        qemu_argv=qemu_argv,
        timed_out=timed_out,
        errors=errors,
    )
    if not keep_export:
        shutil.rmtree(run_dir, ignore_errors=True)
    return run


def _reap(proc: subprocess.Popen[bytes], timeout: float | None) -> tuple[int | None, float | None]:
    """Wait for ``proc`` with wait4(), for its exit status and the CPU time it used."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if deadline is not None and time.monotonic() > deadline:
            return None, None
        time.sleep(0.01)


def _credentials(pid: int) -> dict[str, str]:
    """Uid, Gid, Groups and CapEff lines of /proc/PID/status."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups", "CapEff"):
                out[key] = " ".join(value.split())
    return out


def _read_console(
    proc: subprocess.Popen[bytes], t0: float, timeout: float, creds: dict[str, str]
) -> tuple[str, dict[str, float], bool]:
    """Collect QEMU's serial output, noting when each E2E-* marker arrived.

    At the first output QEMU has surely exec'd: its credentials go into ``creds``.
    """
    assert proc.stdout is not None
    buf = bytearray()
    marks: dict[str, float] = {}
    deadline = t0 + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    timed_out = False
    with sel, contextlib.suppress(OSError):
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                proc.kill()
                break
            if not sel.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            if not creds:
                creds.update(_credentials(proc.pid))
            start = max(0, len(buf) - 16)
            buf += chunk
            now = time.monotonic() - t0
            for marker in ("E2E-BEGIN", "E2E-END"):
                if marker not in marks and marker.encode() in buf[start:]:
                    marks[marker] = now
    proc.stdout.close()
    return buf.decode(errors="replace").replace("\r\n", "\n"), marks, timed_out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--helper", default="qemu", help="qemu, ours, or a helper command line (shell-quoted)"
    )
    ap.add_argument("--mode", choices=["fd", "socket"], default="fd")
    ap.add_argument("--workload", choices=WORKLOADS, default="checks")
    ap.add_argument(
        "--compressed-kernel",
        action="store_true",
        help="boot the bzImage instead of the PVH vmlinux",
    )
    ap.add_argument("--console", action="store_true", help="print the guest console")
    ap.add_argument("--keep", action="store_true", help="keep the export directory")
    ap.add_argument("--trace", type=Path, help="run through virtfs-proto trace, JSON Lines here")
    ap.add_argument(
        "--user",
        metavar="UID:GID",
        help="run the helper and QEMU as this user (rootless; the helper command must be"
        " one it can execute)",
    )
    args = ap.parse_args(argv)
    user = None
    if args.user:
        uid, _, gid = args.user.partition(":")
        user = (int(uid), int(gid or uid))
    helper = {"qemu": QEMU_HELPER, "ours": our_helper()}.get(args.helper) or tuple(
        shlex.split(args.helper)
    )
    run = run_guest(
        helper,
        args.mode,
        compressed_kernel=args.compressed_kernel,
        keep_export=args.keep,
        trace=args.trace,
        workload=args.workload,
        user=user,
    )
    print(f"helper (as uid {user[0] if user else 0}):", shlex.join(run.helper_argv))
    print(f"qemu (as uid {user[0] if user else QEMU_UID}):", shlex.join(run.qemu_argv))
    if args.console:
        print(run.console)
        print("--- helper stderr ---")
        print(run.helper_stderr)
    print(run.summary())
    return 0 if run.all_passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
