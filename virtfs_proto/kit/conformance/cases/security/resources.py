"""Security cases: resource exhaustion (spec: security.rst)."""

from __future__ import annotations

import os

from ..... import messages as m
from ..... import procfs
from ...model import HELPER_PROC, Context, Name, case, qemu, qpath
from ._common import O_RD
from .framing import _in_sync


def _baseline(ctx: Context) -> int:
    _in_sync(ctx)
    return procfs.settled_fd_count(ctx.helper.pid)


def _after(ctx: Context, base: int, what: str) -> None:
    _in_sync(ctx)
    after = procfs.settled_fd_count(ctx.helper.pid)
    ctx.expect(after <= base, f"{what}: the helper holds {after - base} more fds ({after})")
    ctx.notes.append(f"helper fds {base} -> {after}")


@case("security", "resource", name="resource.many_opens", needs=HELPER_PROC)
def resource_many_opens(ctx: Context) -> None:
    """500 T_OPENs (half of the fds kept by the client): the helper's fd count is unchanged."""
    base = _baseline(ctx)
    kept = []
    for i in range(500):
        fd = ctx.fd(qemu(m.OpenRequest, qpath("file.txt" if i % 2 else "dir"), O_RD))
        if i % 2:
            kept.append(fd)
        else:
            ctx.close(fd)
    _after(ctx, base, "500 opens")


@case("security", "resource", name="resource.error_paths", needs=HELPER_PROC)
def resource_error_paths(ctx: Context) -> None:
    """400 failing requests of every kind: no descriptor leaks on error paths."""
    base = _baseline(ctx)
    bad: list[m.Request] = [
        qemu(m.OpenRequest, qpath("missing"), O_RD),
        qemu(m.OpenRequest, qpath("sock"), O_RD),
        qemu(m.OpenRequest, qpath("fifo"), O_RD | os.O_NONBLOCK),
        qemu(m.OpenRequest, qpath("file.txt"), O_RD | os.O_DIRECTORY),
        qemu(
            m.CreateRequest, qpath("file.txt"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, *ctx.ids
        ),
        qemu(m.GetversionRequest, qpath("missing")),
        qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"user.missing"),
        qemu(m.ReadlinkRequest, qpath("file.txt"), 4096),
        qemu(m.TruncateRequest, qpath("dir"), 0),
        qemu(m.ChmodRequest, qpath("escape_rel"), 0o600),
    ]
    for i in range(400):
        reply = ctx.call(bad[i % len(bad)])
        ctx.expect(isinstance(reply, m.ErrorReply), f"{bad[i % len(bad)]!r} succeeded")
    _after(ctx, base, "400 failures")


@case("security", "resource", name="resource.memory_bounded")
def resource_memory(ctx: Context) -> None:
    """200 maximal frames and INT_MAX-sized reads: the helper's RSS grows by < 64 MiB."""
    _in_sync(ctx)
    before = procfs.rss_kib(ctx.helper.pid)
    big = qemu(m.LstatRequest, Name(b"/" + b"m" * 65532))
    for _ in range(100):
        ctx.call(big)
        ctx.call(qemu(m.LgetxattrRequest, 0x7FFFFFFF, qpath("file.txt"), b"user.comment"))
    after = procfs.rss_kib(ctx.helper.pid)
    ctx.expect(after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB")
    ctx.notes.append(f"RSS {before} -> {after} KiB")
