"""The helper's command line and its named socket (spec: helper.rst, transport.rst).

Command-line validation is checked in ``fd`` mode only (it does not depend on
the connection); the named-socket cases run in ``socket`` mode.
"""

from __future__ import annotations

import errno as E
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ... import messages as m
from ...errors import HelperStartError
from ..model import CheckFailed, Context, case, vpath
from ..session import HelperSession

#: A helper that validates its arguments answers at once; one that does not may
#: start serving (or wait in accept()): that is a failure, found by this timeout.
CLI_TIMEOUT: Final = 5.0


def _run(ctx: Context, args: Sequence[str]) -> tuple[int | None, str]:
    """The helper's exit status (None: still running after CLI_TIMEOUT) and stderr."""
    proc = subprocess.Popen(
        [*ctx.argv, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=CLI_TIMEOUT)
        return proc.returncode, err.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        _, err = proc.communicate()
        return None, err.decode(errors="replace")


def _expect_exit(ctx: Context, args: Sequence[str], status: int, message: str = "") -> None:
    got, err = _run(ctx, args)
    shown = " ".join(args)
    if got is None:
        raise CheckFailed(f"`{shown}`: still running after {CLI_TIMEOUT:g} s instead of exiting")
    ctx.expect(got == status, f"`{shown}`: exit status {got}, expected {status}")
    ctx.expect(bool(err.strip()), f"`{shown}`: nothing on standard error")
    if message and message not in err:
        ctx.notes.append(f"`{shown}` says {err.strip().splitlines()[0]!r}")


@case("behaviour", "command-line", name="cli.usage", modes=("fd",))
def cli_usage(ctx: Context) -> None:
    """-h prints the usage on standard error and exits 1."""
    _expect_exit(ctx, ["-h"], 1)


@case("behaviour", "command-line", name="cli.no_connection", modes=("fd",))
def cli_no_connection(ctx: Context) -> None:
    """Neither -s nor -f (or no -p): exit 255 with QEMU's message."""
    _expect_exit(
        ctx, ["-p", str(ctx.host()), "-n"], 255, "socket, socket descriptor or path not specified"
    )
    _expect_exit(ctx, ["-f", "0", "-n"], 255, "socket, socket descriptor or path not specified")


@case("behaviour", "command-line", name="cli.both_connections", modes=("fd",))
def cli_both(ctx: Context) -> None:
    """Both -s and -f: exit 1."""
    path = ctx.ws.rundir / "both.sock"
    _expect_exit(
        ctx,
        ["-p", str(ctx.host()), "-f", "0", "-s", str(path), "-u", "0", "-g", "0", "-n"],
        1,
        "both named socket and socket descriptor specified",
    )
    ctx.expect(not os.path.lexists(path), "a socket file was created anyway")


@case("behaviour", "command-line", name="cli.socket_without_owner", modes=("fd",))
def cli_socket_owner(ctx: Context) -> None:
    """-s without -u/-g: exit 1."""
    path = ctx.ws.rundir / "owner.sock"
    _expect_exit(
        ctx, ["-p", str(ctx.host()), "-s", str(path), "-n"], 1, "owner uid:gid not specified"
    )
    ctx.expect(not os.path.lexists(path), "a socket file was created anyway")


@case("behaviour", "command-line", name="cli.bad_export", modes=("fd",))
def cli_bad_export(ctx: Context) -> None:
    """-p naming nothing, or a file: exit 1."""
    sock_a, sock_b = socket.socketpair()
    with sock_a, sock_b:
        fd = str(sock_b.fileno())
        _expect_exit(ctx, ["-p", str(ctx.host("missing")), "-f", fd, "-n"], 1, "invalid path")
        _expect_exit(ctx, ["-p", str(ctx.host("file.txt")), "-f", fd, "-n"], 1, "not directory")


@case("behaviour", "command-line", name="cli.fd_not_a_number", modes=("fd",))
def cli_fd_nan(ctx: Context) -> None:
    """-f abc is rejected with exit 1 (QEMU's atoi would take fd 0, standard input)."""
    _expect_exit(ctx, ["-p", str(ctx.host()), "-f", "abc", "-n"], 1)


@case("behaviour", "command-line", name="cli.uid_not_a_number", modes=("fd",))
def cli_uid_nan(ctx: Context) -> None:
    """-u x / -g y are rejected with exit 1 (QEMU's atoi would chown the socket to root)."""
    path = ctx.ws.rundir / "nan.sock"
    try:
        _expect_exit(ctx, ["-p", str(ctx.host()), "-s", str(path), "-u", "x", "-g", "y", "-n"], 1)
    finally:
        if os.path.lexists(path):
            os.unlink(path)


# == the named socket ==========================================================


def _must_refuse(ctx: Context, path: Path) -> None:
    """Start the helper on an existing ``path``: it must not serve, nor touch ``path``."""
    before = os.lstat(path)
    try:
        helper = HelperSession(
            ctx.argv, ctx.ws.export, "socket", rundir=ctx.ws.rundir, socket_path=path
        )
    except HelperStartError as exc:
        if exc.returncode is not None and exc.returncode < 0:
            raise CheckFailed(f"the helper crashed: {exc}") from None
    else:
        helper.close()
        raise CheckFailed("the helper served on a socket path that already existed")
    after = os.lstat(path)
    ctx.expect(
        (after.st_ino, after.st_mode, after.st_uid, after.st_gid)
        == (before.st_ino, before.st_mode, before.st_uid, before.st_gid),
        "the existing file at the socket path was replaced or changed",
    )


@case("security", "socket-path", name="socket.path_exists", modes=("socket",))
def socket_path_exists(ctx: Context) -> None:
    """A file already at the socket path: the helper refuses to start and leaves it."""
    path = ctx.ws.rundir / "taken.sock"
    path.write_bytes(b"not a socket")
    _must_refuse(ctx, path)
    ctx.expect(path.read_bytes() == b"not a socket", "the file's content changed")


@case("security", "socket-path", name="socket.path_is_symlink_out", modes=("socket",))
def socket_path_symlink(ctx: Context) -> None:
    """A symlink at the socket path to a sentinel: refused; the sentinel keeps its owner."""
    path = ctx.ws.rundir / "link.sock"
    os.symlink(ctx.ws.secret, path)
    _must_refuse(ctx, path)


@case("security", "socket-path", name="socket.path_dangling_symlink", modes=("socket",))
def socket_path_dangling(ctx: Context) -> None:
    """A dangling symlink at the socket path (to outside/planted.sock): nothing is created."""
    path = ctx.ws.rundir / "dangling.sock"
    os.symlink(ctx.ws.outside / "planted.sock", path)
    _must_refuse(ctx, path)


@case("security", "socket-path", name="socket.one_client_only", modes=("socket",))
def socket_one_client(ctx: Context) -> None:
    """After the first connection is served, a second connect() to the path is refused."""
    path = ctx.ws.rundir / "once.sock"
    helper = HelperSession(
        ctx.argv,
        ctx.ws.export,
        "socket",
        rundir=ctx.ws.rundir,
        socket_path=path,
        unlink_socket=False,
    )
    try:
        ctx.expect(isinstance(helper.call(m.LstatRequest(vpath(""))), m.StatReply), "no lstat")
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with second:
            second.settimeout(2.0)
            try:
                second.connect(os.fsencode(path))
            except OSError as exc:
                ctx.expect(exc.errno == E.ECONNREFUSED, f"second connect: {exc}")
            else:
                raise CheckFailed("a second client could connect")
        ctx.expect(helper.alive(), f"the helper {helper.status()}")
    finally:
        helper.close()
        if os.path.lexists(path):
            os.unlink(path)
