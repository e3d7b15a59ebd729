"""What the security case modules share: escape checks and their table-driven registration."""

from __future__ import annotations

import errno as E
import os
from collections.abc import Callable
from typing import Final

from ..... import messages as m
from .....codec import codecs_for
from ...model import CheckFailed, Context, case, errname, show

#: Errors that correctly refuse a path leaving the export: ENOENT under a chroot
#: (the target does not exist inside it), EXDEV with RESOLVE_BENEATH-like
#: resolution, ELOOP where a final symlink is refused (O_NOFOLLOW).
ESCAPE_ERRNOS: Final = (E.ENOENT, E.EXDEV, E.ELOOP)
#: How long a request on a special file may take before the helper counts as blocked.
SPECIAL_TIMEOUT: Final = 2.0
#: Iterations of each race (bounded: the suite must finish).
RACE_ITERATIONS: Final = 200
XATTR_SIZE_ERRNOS: Final = (E.ENOBUFS, E.E2BIG, E.ERANGE)

O_RD: Final = os.O_RDONLY
H = codecs_for().header_struct


def secret_rel(ctx: Context) -> str:
    """The secret's host path without the leading slash (to append after a symlink to /)."""
    return str(ctx.ws.secret).lstrip("/")


def contained(ctx: Context, request: m.Request, errnos: tuple[int, ...] = ESCAPE_ERRNOS) -> m.Reply:
    """The request names something outside the export: it must fail with ``errnos``
    or (for T_OPEN/T_CREATE) pass back an fd that is inside the export."""
    reply = ctx.call(request)
    if isinstance(reply, m.ErrorReply):
        ctx.expect(
            reply.errno in errnos,
            f"{request.TYPE.name} failed with {errname(reply.errno)}; expected "
            + " or ".join(errname(e) for e in errnos),
        )
    elif isinstance(reply, m.FdReply):
        ctx.expect_inside(reply.fd, request.TYPE.name)
    else:
        raise CheckFailed(f"{request.TYPE.name} of an escaping path succeeded: {show(reply)}")
    return reply


def escape_case(
    name: str, cls: str, doc: str, make: Callable[[Context], m.Request], *errnos: int
) -> None:
    """Register a table-driven containment case."""

    def run(ctx: Context) -> None:
        contained(ctx, make(ctx), errnos or ESCAPE_ERRNOS)

    run.__doc__ = doc
    case("security", cls, name=name)(run)
