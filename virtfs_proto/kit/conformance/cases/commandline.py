"""The helper's command line and its named socket (spec: helper.rst, transport.rst).

Command-line validation is checked in ``fd`` mode only (it does not depend on
the connection); the named-socket cases run in ``socket`` mode.
"""

from __future__ import annotations

import contextlib
import errno as E
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from .... import messages as m
from ....errors import HelperStartError
from ....launcher import helper_args
from ..model import OTHER_SOCKET_OWNER, CheckFailed, Context, case, qemu, qpath
from ..session import HelperSession

#: A helper that validates its arguments answers at once; one that does not may
#: start serving (or wait in accept()): that is a failure, found by this timeout.
CLI_TIMEOUT: Final = 5.0


def _run(ctx: Context, args: Sequence[str]) -> tuple[int | None, str]:
    """The helper's exit status (None: still running after CLI_TIMEOUT) and stderr.

    Not spawn_helper: these command lines are the wrong ones, and the helper
    must exit instead of serving."""
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
        ctx.expect(
            isinstance(helper.call(qemu(m.LstatRequest, qpath(""))), m.StatReply), "no lstat"
        )
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


# == the socket's owner: chown through a swapped name ==========================

#: How long the helper's return from bind() is held up (strace fault
#: injection), so that the swap lands between bind and chown every time.
BIND_DELAY_US: Final = 500_000

#: The owner the swap cases give the socket: not root, so a chown shows.
SOCKET_OWNER: Final = 65534


def swap_when_bound(
    dirfd: int,
    name: str,
    spare: str,
    *,
    until: float,
    respare: Callable[[], None] | None = None,
    poll: float = 0.0,
) -> int:
    """Each time a socket appears at ``name``, rename ``spare`` over it (both in ``dirfd``).

    This is the attacker who may write the socket's directory, racing the
    helper between its bind and its chown. ``respare`` re-creates ``spare``
    after a swap (None: swap once and return); ``poll`` is the pause between
    looks (0: spin). Returns the number of swaps made before ``until``
    (``time.monotonic()``).
    """
    swaps = 0
    while time.monotonic() < until:
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISSOCK(st.st_mode):
            os.rename(spare, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            swaps += 1
            if respare is None:
                return swaps
            respare()
        if poll:
            time.sleep(poll)
    return swaps


def _owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _start_with_swap(ctx: Context, name: str, spare: str) -> str:
    """Start the helper on ``rundir/name`` with its bind() held up, and swap ``spare``
    (already in rundir) in for the socket the moment it appears. Returns what
    became of the helper."""
    strace = shutil.which("strace")
    if strace is None:
        raise CheckFailed("this case needs strace (fault injection holds up bind)")
    path = ctx.ws.rundir / name
    dirfd = os.open(ctx.ws.rundir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    options = helper_args(ctx.ws.export, socket_path=str(path), uid=SOCKET_OWNER, gid=SOCKET_OWNER)
    # not spawn_helper: the helper runs under strace, and nobody may connect
    proc = subprocess.Popen(
        [
            *(strace, "-f", "-qq", "-o", os.devnull, "-e", "trace=bind"),
            *("-e", f"inject=bind:delay_exit={BIND_DELAY_US}", *ctx.argv, *options),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        swapped = swap_when_bound(dirfd, name, spare, until=time.monotonic() + 10, poll=0.0005)
        if not swapped:
            raise CheckFailed(f"the helper never bound {path} (it {_status(proc)})")
        # held up in bind() until now; then it chowns (or refuses) at once
        try:
            proc.wait(BIND_DELAY_US / 1e6 + 1.0)
        except subprocess.TimeoutExpired:
            return "went on to wait for a client"
        assert proc.stderr is not None
        last = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        return f"exited with status {proc.returncode} ({' '.join(last)})"
    finally:
        os.close(dirfd)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        for leftover in (name, spare):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ctx.ws.rundir / leftover)


def _status(proc: subprocess.Popen[bytes]) -> str:
    return "still runs" if proc.poll() is None else f"exited with status {proc.returncode}"


def _socket_race(name: str) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a socket-swap race; its socket's owner (-u/-g) must not be the invoker's."""
    return case(
        "security",
        "socket-path",
        name=f"socket.{name}",
        modes=("socket",),
        needs=OTHER_SOCKET_OWNER,
    )


@_socket_race("chown_follows_no_symlink")
def socket_chown_no_symlink(ctx: Context) -> None:
    """The socket swapped for a symlink to a sentinel between bind and chown: no chown of it."""
    before = _owner(ctx.ws.secret)
    os.symlink(ctx.ws.secret, ctx.ws.rundir / "spare-link")
    outcome = _start_with_swap(ctx, "swapped.sock", "spare-link")
    after = _owner(ctx.ws.secret)
    if after != before:
        raise CheckFailed(
            f"the helper chowned the sentinel {ctx.ws.secret} to {after[0]}:{after[1]} through"
            f" a symlink swapped in for its socket after bind() (then it {outcome})"
        )


@_socket_race("chown_only_its_own_socket")
def socket_chown_own_socket(ctx: Context) -> None:
    """The socket swapped for another (listening) socket between bind and chown: not chowned."""
    decoy = ctx.ws.rundir / "decoy.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(os.fsencode(decoy))
        listener.listen(1)
        before = _owner(decoy)
        os.link(decoy, ctx.ws.rundir / "spare-socket")  # the same socket file, a second name
        outcome = _start_with_swap(ctx, "swapped.sock", "spare-socket")
        after = _owner(decoy)
        os.unlink(decoy)
    if after != before:
        raise CheckFailed(
            f"the helper chowned a socket file that is not its own to {after[0]}:{after[1]}"
            f" (swapped in after bind(); then it {outcome})"
        )
