"""Security cases: special files (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os
import stat
from collections.abc import Callable

from ..... import messages as m
from ...model import DEVICE_NODES, CheckFailed, Context, case, errname, qemu, qpath, show
from ._common import O_RD, SPECIAL_TIMEOUT


def _special(ctx: Context, request: m.Request, errnos: tuple[int, ...]) -> None:
    reply = ctx.call(request, timeout=SPECIAL_TIMEOUT)
    if isinstance(reply, m.FdReply):
        mode = os.fstat(reply.fd).st_mode
        raise CheckFailed(f"passed back an fd to a {stat.filemode(mode)[0]!r} special file")
    if not isinstance(reply, m.ErrorReply):
        raise CheckFailed(f"succeeded ({show(reply)}); expected {errnos}")
    ctx.expect(
        reply.errno in errnos,
        f"failed with {errname(reply.errno)}; expected " + " or ".join(errname(e) for e in errnos),
    )


_SPECIAL: list[tuple[str, str, Callable[[Context], m.Request], tuple[int, ...]]] = [
    (
        "open_fifo",
        "T_OPEN O_RDONLY of a FIFO: ENXIO without blocking",
        lambda ctx: qemu(m.OpenRequest, qpath("fifo"), O_RD),
        (E.ENXIO,),
    ),
    (
        "open_fifo_wronly",
        "T_OPEN O_WRONLY of a FIFO: ENXIO without blocking",
        lambda ctx: qemu(m.OpenRequest, qpath("fifo"), os.O_WRONLY),
        (E.ENXIO,),
    ),
    (
        "open_fifo_nonblock",
        "T_OPEN O_RDONLY|O_NONBLOCK of a FIFO: ENXIO",
        lambda ctx: qemu(m.OpenRequest, qpath("fifo"), O_RD | os.O_NONBLOCK),
        (E.ENXIO,),
    ),
    (
        "open_fifo_via_symlink",
        "T_OPEN of a symlink to a FIFO: ENXIO without blocking",
        lambda ctx: qemu(m.OpenRequest, qpath("link_fifo"), O_RD),
        (E.ENXIO,),
    ),
    (
        "create_existing_fifo",
        "T_CREATE (no O_EXCL) on an existing FIFO: ENXIO, no block",
        lambda ctx: qemu(m.CreateRequest, qpath("fifo"), os.O_WRONLY | os.O_CREAT, 0o644, *ctx.ids),
        (E.ENXIO,),
    ),
    (
        "open_chardev",
        "T_OPEN of a character device: ENXIO, no fd",
        lambda ctx: qemu(m.OpenRequest, qpath("chardev"), os.O_RDWR),
        (E.ENXIO,),
    ),
    (
        "open_socket",
        "T_OPEN of a socket file: ENXIO",
        lambda ctx: qemu(m.OpenRequest, qpath("sock"), os.O_RDWR),
        (E.ENXIO,),
    ),
    (
        "getversion_fifo",
        "T_GETVERSION of a FIFO must not open (block on) it",
        lambda ctx: qemu(m.GetversionRequest, qpath("fifo")),
        (E.ENOTTY, E.ENXIO),
    ),
    (
        "getversion_chardev",
        "T_GETVERSION of a device: ENOTTY or ENXIO",
        lambda ctx: qemu(m.GetversionRequest, qpath("chardev")),
        (E.ENOTTY, E.ENXIO),
    ),
    (
        "truncate_fifo",
        "T_TRUNCATE of a FIFO: EINVAL without opening it",
        lambda ctx: qemu(m.TruncateRequest, qpath("fifo"), 0),
        (E.EINVAL,),
    ),
    (
        "truncate_chardev",
        "T_TRUNCATE of a character device: EINVAL",
        lambda ctx: qemu(m.TruncateRequest, qpath("chardev"), 0),
        (E.EINVAL,),
    ),
]


def _special_case(
    name: str, doc: str, make: Callable[[Context], m.Request], errnos: tuple[int, ...]
) -> None:
    def run(ctx: Context) -> None:
        _special(ctx, make(ctx), errnos)

    run.__doc__ = doc
    needs = (DEVICE_NODES,) if "chardev" in name else ()
    case("security", "special-file", name=f"special.{name}", needs=needs)(run)


for _sname, _sdoc, _smake, _serr in _SPECIAL:
    _special_case(_sname, _sdoc, _smake, _serr)


@case("security", "special-file", name="special.metadata_ops_do_not_open")
def special_metadata(ctx: Context) -> None:
    """T_STATFS/T_CHMOD/T_LSTAT of a FIFO answer without blocking (they need no open)."""
    for request in (
        qemu(m.StatfsRequest, qpath("fifo")),
        qemu(m.ChmodRequest, qpath("fifo"), 0o600),
        qemu(m.LstatRequest, qpath("fifo")),
    ):
        ctx.call(request, timeout=SPECIAL_TIMEOUT)
