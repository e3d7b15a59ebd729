"""atheris harness for the reference helper's dispatch: bytes in over a socketpair.

Each input is written to :func:`virtfs_proto.server.main.serve` (the helper's
request loop, with :class:`~virtfs_proto.server.ops.Operations` as its
handler) through a socketpair, then the write side is shut; the harness reads
every reply (closing passed descriptors) until the loop ends. Invariants:

* ``serve`` returns 0 or 1 (EOF, or fatal garbage) within 5 s, never raises;
* the sentinels outside the export are unread and unchanged;
* the process's descriptor count returns to its starting value.

Only containment layer (a) (``openat2``/walk resolution) is exercised, since the
loop runs in this process; so that a containment bug cannot reach the host,
the harness first ``chroot``s itself into its temporary workspace, in a
private mount namespace (needs root). The export is rebuilt every
``REBUILD_EVERY`` inputs; a child process removes the workspace when the
fuzzer stops.

Run: see fuzz/README.md.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from pathlib import Path

import atheris
from seeds import main, vectors

with atheris.instrument_imports():
    from virtfs_proto.kit.conformance.workspace import Workspace
    from virtfs_proto.server.main import Log, serve
    from virtfs_proto.server.ops import Operations
    from virtfs_proto.server.resolve import Resolver

REBUILD_EVERY = 200
TIMEOUT = 5.0

_ws: Workspace | None = None
_before: dict[str, object] = {}
_ops: Operations | None = None
_count = 0
_base_fds = 0


def _open_fds() -> int:
    """Descriptors in use (no /proc inside the chroot: probe them)."""
    n = 0
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        n += 1
    return n


class _Quiet(Log):
    """The helper's log, silenced (the fuzzer's output is its report)."""

    def __call__(self, message: str, priority: int = 0) -> None:
        pass


_LOG = _Quiet()
_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x20000, 0x1000, 0x4000, 0x40000


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_workspace(ws: Workspace) -> None:
    """chroot into the workspace, in a private mount namespace where the directories
    libFuzzer writes to (the cwd, corpus directories) are bind-mounted at their own
    paths, so corpus entries and crash files still land where they belong."""
    # A child outside the chroot and the new namespace removes the workspace once
    # this process is gone (it sees EOF on the pipe when we exit, however we exit).
    r, w = os.pipe()
    if os.fork() == 0:  # pragma: no cover - the cleaner
        os.close(w)
        os.read(r, 1)
        ws.cleanup()
        os._exit(0)
    os.close(r)
    _check(_libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    cwd = os.getcwd()
    dirs = {cwd, *(os.path.abspath(a) for a in sys.argv[1:] if not a.startswith("-"))}
    for d in sorted(x for x in dirs if os.path.isdir(x)):
        target = ws.root / d.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _check(_libc.mount(d.encode(), bytes(target), None, _MS_BIND, None), f"bind {d}")
    os.chroot(ws.root)
    os.chdir(cwd)


def _setup() -> None:
    global _ws, _ops, _before, _base_fds
    if os.geteuid() != 0:
        sys.exit("fuzz_helper_dispatch: run as root (it chroots into its workspace)")
    ws = Workspace()
    ws.build_export()
    _enter_workspace(ws)
    # the same workspace, seen from inside the chroot
    ws.root = Path("/")
    ws.export, ws.outside, ws.rundir = Path("/export"), Path("/outside"), Path("/run")
    ws.secret, ws.secret_dir = ws.outside / "secret.txt", ws.outside / "secret_dir"
    ws.build_export()
    root_fd = os.open("/export", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    _ops = Operations(Resolver(root_fd), get_version=False, log=lambda *a: None)
    _ws, _before = ws, dict(ws.snapshot())
    _base_fds = _open_fds()


def _drain(sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT)
    while True:
        data, anc, _flags, _ = sock.recvmsg(65536, socket.CMSG_SPACE(64 * 4))
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for i in range(0, len(cdata) - len(cdata) % 4, 4):
                    os.close(int.from_bytes(cdata[i : i + 4], sys.byteorder))
        if not data:
            return


def test_one_input(data: bytes) -> None:
    global _count
    if _ws is None:
        _setup()  # on the first input: atheris imports libFuzzer inside Fuzz(), before the chroot
    assert _ws is not None and _ops is not None
    _count += 1
    if _count % REBUILD_EVERY == 0:
        _ws.build_export()
    ours, theirs = socket.socketpair()
    outcome: list[object] = []

    def loop() -> None:
        try:
            outcome.append(serve(theirs, _ops.answer, _LOG))  # type: ignore[union-attr]
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)
        finally:
            theirs.close()

    def feed() -> None:
        try:
            ours.sendall(data)
            ours.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the loop ended (fatal frame) before reading everything

    server, sender = threading.Thread(target=loop), threading.Thread(target=feed)
    server.start()
    sender.start()
    try:
        _drain(ours)
    finally:
        ours.close()
    sender.join(TIMEOUT)
    server.join(TIMEOUT)
    if server.is_alive():
        raise AssertionError("the helper's loop hung")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    assert result in (0, 1), f"serve returned {result!r}"
    changes = _ws.differences(_before, _ws.snapshot())  # type: ignore[arg-type]
    assert not changes, f"escape: {changes}"
    assert _open_fds() == _base_fds, "descriptor leak"


def seeds() -> dict[str, bytes]:
    """Each golden vector's request stream."""
    return {
        name: b"".join(bytes.fromhex(ex["request"]) for ex in exchanges)
        for name, exchanges in vectors()
    }


if __name__ == "__main__":
    main(test_one_input, seeds)
