"""Security cases: information leaks (spec: security.rst)."""

from __future__ import annotations

from ..... import messages as m
from ...model import CheckFailed, Context, case, qemu, qpath
from ._common import O_RD


@case("security", "info-leak", name="leak.getversion_high_bits")
def getversion_high_bits(ctx: Context) -> None:
    """T_GETVERSION's high 32 bits are zero (QEMU's helper leaks stack bytes there),
    asked fresh and after each of a few other requests (what a previous request left
    on the stack is what leaks)."""
    before: list[m.Request | None] = [
        None,
        qemu(m.OpenRequest, qpath("file.txt"), O_RD),
        qemu(m.LstatRequest, qpath("file.txt")),
        qemu(m.ChmodRequest, qpath("empty.txt"), 0o644),
        qemu(m.LgetxattrRequest, 0, qpath("file.txt"), b"user.comment"),
    ]
    names = ("file.txt", "dir", "", "empty.txt", "file.txt")
    for name, previous in zip(names, before, strict=True):
        if previous is not None:
            first = ctx.call(previous)
            if isinstance(first, m.FdReply):
                ctx.close(first.fd)
        reply = ctx.call(qemu(m.GetversionRequest, qpath(name)))
        if isinstance(reply, m.VersionReply) and reply.version >> 32:
            raise CheckFailed(
                f"{name or '/'}: version {reply.version:#018x}: the high 32 bits are not zero"
            )
