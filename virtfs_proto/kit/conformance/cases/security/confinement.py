"""Security cases: confinement self-check (spec: security.rst)."""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Final

from ..... import procfs
from ...model import HELPER_PROC, CheckFailed, Context, case
from .framing import _in_sync
from .magic_links import _own_helper

#: Capabilities a helper may hold after start-up (spec: the privilege model):
#: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID. Not MKNOD: by default
#: a helper must not be able to make device nodes (spec: device nodes).
ALLOWED_MASK: Final = sum(1 << cap for cap in (0, 1, 2, 3, 4))


def _threads(ctx: Context) -> list[procfs.ThreadConfinement]:
    _in_sync(ctx)
    threads = procfs.confinement_report(ctx.helper.pid)
    ctx.expect(bool(threads), "no thread found in /proc")
    return threads


@case("security", "confinement", name="confine.not_root")
def confine_not_root(ctx: Context) -> None:
    """Every thread runs with real, effective, saved and fs uid and gid all non-zero."""
    for t in _threads(ctx):
        ctx.expect(0 not in t.uid, f"thread {t.tid}: uids {t.uid} include root")
        ctx.expect(0 not in t.gid, f"thread {t.tid}: gids {t.gid} include root")


@case("security", "confinement", name="confine.capabilities")
def confine_caps(ctx: Context) -> None:
    """Every thread's permitted/effective/inheritable/ambient sets are within the allowed five."""
    for t in _threads(ctx):
        for label, mask in (
            ("permitted", t.cap_prm),
            ("effective", t.cap_eff),
            ("inheritable", t.cap_inh),
            ("ambient", t.cap_amb),
        ):
            extra = mask & ~ALLOWED_MASK
            ctx.expect(
                not extra,
                f"thread {t.tid} {label}: {', '.join(procfs.capability_names(extra)[:6])}",
            )


@case("security", "confinement", name="confine.bounding_set")
def confine_bounding(ctx: Context) -> None:
    """Every thread's bounding set is within the allowed five (no execve regains more)."""
    for t in _threads(ctx):
        extra = t.cap_bnd & ~ALLOWED_MASK
        ctx.expect(
            not extra,
            f"thread {t.tid} bounding set keeps {len(procfs.capability_names(extra))} more caps "
            f"({', '.join(procfs.capability_names(extra)[:4])}...)",
        )


@case("security", "confinement", name="confine.no_new_privs")
def confine_nnp(ctx: Context) -> None:
    """Every thread has PR_SET_NO_NEW_PRIVS."""
    for t in _threads(ctx):
        ctx.expect(t.no_new_privs == 1, f"thread {t.tid}: NoNewPrivs is {t.no_new_privs}")


@case("security", "confinement", name="confine.root_is_export", needs=HELPER_PROC)
def confine_root(ctx: Context) -> None:
    """Every thread's root directory is the export (chroot), not the host's /
    (the same object: ``(st_dev, st_ino)`` through /proc/<pid>/task/<tid>/root)."""
    export = procfs.object_id(ctx.ws.export)
    for t in _threads(ctx):
        ctx.expect(t.root_dev_ino == export, f"thread {t.tid}: root is {t.root}")


@case("security", "confinement", name="confine.inherited_fds_closed", fresh=True, needs=HELPER_PROC)
def confine_inherited(ctx: Context) -> None:
    """An fd to an outside directory inherited at start is closed before serving
    (the helper's own fd table in procfs, through which it reopens checked files,
    is the one allowed descriptor outside the export)."""
    outside = os.open(ctx.ws.outside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        helper = _own_helper(ctx, (outside,))
    finally:
        os.close(outside)
    if helper is None:
        raise CheckFailed("the helper did not start")
    try:
        # told by object, not by the link's text (a helper in namespaces of
        # its own shows paths the reader cannot interpret): no fd is the
        # outside directory, and every other directory fd but the helper's
        # own fd table lies on the export's file system
        outside_id = procfs.object_id(ctx.ws.outside)
        export_dev = procfs.object_id(ctx.ws.export)[0]
        leaks = [
            f"fd {fd}"
            for fd, obj in procfs.fd_objects(helper.pid).items()
            if fd > 2
            and (obj[:2] == outside_id or (obj[2] and obj[0] != export_dev))
            and not procfs.is_own_fd_table(helper.pid, fd)
        ]
        ctx.expect(not leaks, "the helper holds fds outside the export: " + ", ".join(leaks))
    finally:
        helper.close()


@case("security", "confinement", name="confine.socket_file", modes=("socket",))
def confine_socket_file(ctx: Context) -> None:
    """The named socket is owned -u:-g and has no permissions for others (looked
    at once the helper has answered: it may chown the file after it listens)."""
    path = ctx.ws.rundir / "confine.sock"
    helper = _own_helper(ctx, socket_path=path, unlink_socket=False)
    if helper is None:
        raise CheckFailed("the helper did not start")
    try:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise CheckFailed("the socket file was not found after the first reply") from None
        ctx.expect(stat.S_ISSOCK(st.st_mode), "not a socket")
        ctx.expect(
            (st.st_uid, st.st_gid) == (helper.uid, helper.gid),
            f"owner {st.st_uid}:{st.st_gid}, not {helper.uid}:{helper.gid}",
        )
        ctx.expect(stat.S_IMODE(st.st_mode) & 0o007 == 0, f"mode {stat.filemode(st.st_mode)}")
    finally:
        helper.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
