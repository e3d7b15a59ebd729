"""Security cases: information leaks (spec: security.rst)."""

from __future__ import annotations

from ..... import messages as m
from ...model import CheckFailed, Context, case, vpath
from ._common import O_RD


@case("security", "info-leak", name="leak.getversion_high_bits")
def getversion_high_bits(ctx: Context) -> None:
    """T_GETVERSION's high 32 bits are zero (QEMU's helper leaks stack bytes there),
    asked fresh and after each of a few other requests (what a previous request left
    on the stack is what leaks)."""
    before: list[m.Request | None] = [
        None,
        m.OpenRequest(vpath("file.txt"), O_RD),
        m.LstatRequest(vpath("file.txt")),
        m.ChmodRequest(vpath("empty.txt"), 0o644),
        m.LgetxattrRequest(0, vpath("file.txt"), b"user.comment"),
    ]
    names = ("file.txt", "dir", "", "empty.txt", "file.txt")
    for name, previous in zip(names, before, strict=True):
        if previous is not None:
            first = ctx.call(previous)
            if isinstance(first, m.FdReply):
                ctx.close(first.fd)
        reply = ctx.call(m.GetversionRequest(vpath(name)))
        if isinstance(reply, m.VersionReply) and reply.version >> 32:
            raise CheckFailed(
                f"{name or '/'}: version {reply.version:#018x}: the high 32 bits are not zero"
            )
