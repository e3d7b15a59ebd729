"""``--test-inside``: system calls made from inside the confined serving process.

Test-only (refused unless ``VIRTFS_PROTO_TESTING=1``). After every layer is
in place, the way a subverted helper would be, each named action makes its
system calls and prints one JSON line: ``{"action": ..., "outcome": "ok" or
the errno's name, "step": the call that failed}``. Then the helper exits
without serving. A seccomp filter that kills the process for trying shows
as a missing line and death by SIGSYS. The tests (tests/server/
test_sandbox.py) decide what each outcome means.

Actions: ``devnode`` (mknod c 10:232, then open it), ``tcp:PORT`` (connect
to 127.0.0.1:PORT), ``kill:PID`` (kill 0, then SIGTERM), ``ptrace:PID``
(PTRACE_ATTACH), ``userns`` (unshare CLONE_NEWUSER), ``mount`` (a tmpfs),
``chroot-escape`` (mkdir x; chroot x; chdir ../../..; chroot .),
``open:PATH`` (open a path for reading).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import stat
import sys
from collections.abc import Callable
from typing import Final

from . import oslib

#: names made in the export's root by the actions (removed again when made)
_DEVICE: Final = "virtfs-inside-device"
_MOUNT_POINT: Final = "virtfs-inside-mnt"
_CHROOT_DIR: Final = "virtfs-inside-chroot"


class _Step(Exception):
    def __init__(self, step: str, exc: OSError) -> None:
        super().__init__(step)
        self.step = step
        self.errno = exc.errno or 0


def _do(step: str, call: Callable[[], object]) -> object:
    try:
        return call()
    except OSError as exc:
        raise _Step(step, exc) from None


def _devnode(_: str) -> None:
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _do(
            "mknod",
            lambda: os.mknod(_DEVICE, stat.S_IFCHR | 0o600, os.makedev(10, 232), dir_fd=here),
        )
        try:
            fd = _do("open", lambda: os.open(_DEVICE, os.O_RDWR | os.O_CLOEXEC, dir_fd=here))
            assert isinstance(fd, int)
            os.close(fd)
        finally:
            os.unlink(_DEVICE, dir_fd=here)
    finally:
        os.close(here)


def _tcp(port: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        _do("connect", lambda: s.connect(("127.0.0.1", int(port))))


def _kill(pid: str) -> None:
    _do("kill 0", lambda: os.kill(int(pid), 0))
    _do("kill SIGTERM", lambda: os.kill(int(pid), signal.SIGTERM))


def _ptrace(pid: str) -> None:
    _do("ptrace attach", lambda: oslib.ptrace(oslib.PTRACE_ATTACH, int(pid)))
    os.waitpid(int(pid), os.WUNTRACED)  # a tracee detaches only once stopped
    oslib.ptrace(oslib.PTRACE_DETACH, int(pid))


def _userns(_: str) -> None:
    _do("unshare", lambda: oslib.unshare(oslib.CLONE_NEWUSER))


def _mount(_: str) -> None:
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # mkdirat, as the helper itself makes directories: the attempt must
        # reach mount(2), not stop at a call the helper never makes
        _do("mkdir", lambda: os.mkdir(_MOUNT_POINT, dir_fd=here))
        try:
            _do("mount", lambda: oslib.mount("tmpfs", _MOUNT_POINT, "tmpfs", 0))
            oslib.umount2(_MOUNT_POINT, oslib.MNT_DETACH)
        finally:
            os.rmdir(_MOUNT_POINT, dir_fd=here)
    finally:
        os.close(here)


def _chroot_escape(_: str) -> None:
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _do("mkdir", lambda: os.mkdir(_CHROOT_DIR, dir_fd=here))
        try:
            _do("chroot x", lambda: os.chroot(_CHROOT_DIR))
            _do("chdir ../../..", lambda: os.chdir("../../.."))
            _do("chroot .", lambda: os.chroot("."))
        finally:
            # through an fd: the root and the cwd may be elsewhere by now
            with contextlib.suppress(OSError):
                os.rmdir(_CHROOT_DIR, dir_fd=here)
    finally:
        os.close(here)


def _open(path: str) -> None:
    fd = _do("open", lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    assert isinstance(fd, int)
    os.close(fd)


ACTIONS: Final[dict[str, Callable[[str], None]]] = {
    "devnode": _devnode,
    "tcp": _tcp,
    "kill": _kill,
    "ptrace": _ptrace,
    "userns": _userns,
    "mount": _mount,
    "chroot-escape": _chroot_escape,
    "open": _open,
}


def run_actions(actions: tuple[str, ...]) -> int:
    """Run each ``name[:argument]`` action and print its outcome; 0."""
    for action in actions:
        name, _, argument = action.partition(":")
        result: dict[str, str] = {"action": action, "step": ""}
        try:
            ACTIONS[name](argument)
        except KeyError:
            result.update(outcome="EINVAL", step="unknown action")
        except _Step as exc:
            result.update(outcome=errno.errorcode.get(exc.errno, str(exc.errno)), step=exc.step)
        else:
            result.update(outcome="ok")
        print(json.dumps(result), flush=True)
    sys.stdout.flush()
    return 0
