"""Security cases: magic links (spec: security.rst)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Final

from ..... import messages as m
from ...model import MOUNTS, CheckFailed, Context, Name, case, qemu, qpath
from ...session import HelperSession
from ._common import O_RD, secret_rel

_PR_CAPBSET_DROP: Final = 24


def _drop_all_capabilities() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)


def _own_helper(
    ctx: Context,
    extra_fds: tuple[int, ...] = (),
    *,
    socket_path: Path | None = None,
    unlink_socket: bool = True,
) -> HelperSession | None:
    """A helper of the case's own, which has answered an lstat of the root; None
    if it refused to start (a clean, non-signal exit)."""
    from .....errors import HelperStartError

    try:
        helper = HelperSession(
            ctx.argv,
            ctx.ws.export,
            ctx.mode,
            rundir=ctx.ws.rundir,
            extra_fds=extra_fds,
            socket_path=socket_path,
            unlink_socket=unlink_socket,
        )
    except HelperStartError as exc:
        if exc.returncode is not None and exc.returncode < 0:
            raise CheckFailed(f"the helper crashed at start: {exc}") from None
        ctx.notes.append("the helper refused to serve this export")
        return None
    # fd mode: a refusal shows as EOF on the first request
    try:
        reply = helper.call(qemu(m.LstatRequest, qpath("")))
    except Exception:
        status = helper.wait_exit(2.0)
        helper.close()
        if status is not None and status >= 0:
            ctx.notes.append("the helper refused to serve this export")
            return None
        raise CheckFailed(f"the helper did not answer ({helper.status()})") from None
    ctx.expect(isinstance(reply, m.StatReply), "lstat of the root failed")
    return helper


def _probe_magic(ctx: Context, helper: HelperSession, paths: list[bytes]) -> int:
    """Open each path; every fd must be inside the export. Returns how many opened."""
    opened = 0
    for p in paths:
        for flags in (O_RD, O_RD | os.O_DIRECTORY):
            reply = helper.call(qemu(m.OpenRequest, Name(p), flags))
            if isinstance(reply, m.FdReply):
                ctx.adopt(reply.fd)
                ctx.expect_inside(reply.fd, f"T_OPEN {p!r}")
                opened += 1
        reply = helper.call(qemu(m.LstatRequest, Name(p)))
        if isinstance(reply, m.StatReply):
            secret = os.lstat(ctx.ws.secret)
            ctx.expect(
                (reply.st_dev, reply.st_ino) != (secret.st_dev, secret.st_ino),
                f"T_LSTAT {p!r} reached the secret",
            )
    return opened


@case("security", "magic-link", name="magic.proc_self_fd_inherited", fresh=True, needs=MOUNTS)
def magic_proc_self_fd(ctx: Context) -> None:
    """With procfs in the export and an inherited fd to outside: /proc/self/fd/N/secret.txt."""
    ctx.ws.mount_proc()
    outside = os.open(ctx.ws.outside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        helper = _own_helper(ctx, (outside,))
    finally:
        os.close(outside)
    if helper is None:
        return
    try:
        paths = [b"/proc/self/fd/%d/secret.txt" % n for n in range(3, 32)]
        paths += [b"/proc/self/root/../outside/secret.txt", b"/proc/self/cwd/../outside"]
        paths += [b"/proc/thread-self/fd/%d/secret.txt" % n for n in range(3, 16)]
        _probe_magic(ctx, helper, paths)
        ctx.expect(helper.alive(), f"the helper {helper.status()}")
    finally:
        helper.close()


@case("security", "magic-link", name="magic.proc_pid_root", fresh=True, needs=MOUNTS)
def magic_proc_pid_root(ctx: Context) -> None:
    """With procfs in the export: /proc/<pid>/root/<secret> of a root process without caps."""
    import subprocess

    ctx.ws.mount_proc()
    bait = subprocess.Popen(
        ["sleep", "30"], preexec_fn=_drop_all_capabilities, stdin=subprocess.DEVNULL
    )
    try:
        helper = _own_helper(ctx)
        if helper is None:
            return
        try:
            rel = os.fsencode(secret_rel(ctx))
            paths = [b"/proc/%d/root/%s" % (pid, rel) for pid in (bait.pid, 1, os.getpid())]
            paths += [b"/proc/%d/cwd" % bait.pid]
            _probe_magic(ctx, helper, paths)
            ctx.expect(helper.alive(), f"the helper {helper.status()}")
        finally:
            helper.close()
    finally:
        bait.kill()
        bait.wait(5)
