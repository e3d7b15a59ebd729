"""Security cases: hard links (spec: security.rst)."""

from __future__ import annotations

import os
import stat

from ..... import messages as m
from ...model import Context, Name, case, qemu, qpath
from ._common import escape_case

escape_case(
    "hardlink.dotdot_oldpath",
    "hard-link",
    "T_LINK ../outside/secret.txt into the export must fail",
    lambda c: qemu(m.LinkRequest, qpath(b"../outside/secret.txt"), qpath("stolen")),
)
escape_case(
    "hardlink.absolute_oldpath",
    "hard-link",
    "T_LINK of the secret's absolute host path must fail",
    lambda c: qemu(m.LinkRequest, Name(os.fsencode(c.ws.secret)), qpath("stolen")),
)
escape_case(
    "hardlink.intermediate_oldpath",
    "hard-link",
    "T_LINK escape_dir/secret.txt (through a symlink out) must fail",
    lambda c: qemu(m.LinkRequest, qpath("escape_dir/secret.txt"), qpath("stolen")),
)
escape_case(
    "hardlink.newpath_outside",
    "hard-link",
    "T_LINK file.txt to escape_dir/planted must not plant a link outside",
    lambda c: qemu(m.LinkRequest, qpath("file.txt"), qpath("escape_dir/planted")),
)


@case("security", "hard-link", name="hardlink.final_symlink_to_outside")
def hardlink_symlink(ctx: Context) -> None:
    """T_LINK of a symlink to the secret links the symlink (or fails), never the secret."""
    reply = ctx.call(qemu(m.LinkRequest, qpath("escape_abs"), qpath("hl")))
    if isinstance(reply, m.ErrorReply):
        return
    ctx.expect(stat.S_ISLNK(os.lstat(ctx.host("hl")).st_mode), "the new name is not the link")
