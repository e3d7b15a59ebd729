"""Security: attacks on the helper, one case per attack (spec: security.rst, limits.rst).

Every case also passes through the runner's two global checks: the sentinels
outside the export are unread and unchanged, and the helper is alive (or, for
a fatal frame, exited without being killed by a signal).
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .... import messages as m
from .... import procfs
from ....codec import codecs_for, encode_request
from ....constants import HEADER_SIZE, UTIME_NOW, MessageType
from ..model import CheckFailed, Context, Deviation, case, errname, show, spath, vpath
from ..session import HelperSession
from ..workspace import DECOY_CONTENT, FILE_CONTENT
from .behaviour import read_all

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


# == bad names ==============================================================

escape_case(
    "names.dotdot_open",
    "bad-names",
    "T_OPEN //../outside/secret.txt: .. at the root stays at the root",
    lambda c: m.OpenRequest(b"//../outside/secret.txt\0", O_RD),
)
escape_case(
    "names.dotdot_deep_open",
    "bad-names",
    "T_OPEN dir/ followed by 20 .. and the secret's host path",
    lambda c: m.OpenRequest(b"//dir/" + b"../" * 20 + os.fsencode(secret_rel(c)) + b"\0", O_RD),
)
escape_case(
    "names.absolute_host_path_open",
    "bad-names",
    "T_OPEN of the secret's absolute host path resolves inside the export",
    lambda c: m.OpenRequest(os.fsencode(c.ws.secret) + b"\0", O_RD),
)
escape_case(
    "names.absolute_host_path_lstat",
    "bad-names",
    "T_LSTAT of the secret's absolute host path must not leak its metadata",
    lambda c: m.LstatRequest(os.fsencode(c.ws.secret) + b"\0"),
)
escape_case(
    "names.dotdot_getxattr",
    "bad-names",
    "T_LGETXATTR of ../outside/secret.txt must not read the sentinel's xattr",
    lambda c: m.LgetxattrRequest(100, b"//../outside/secret.txt\0", b"user.sentinel"),
)
escape_case(
    "names.dotdot_rename_in",
    "bad-names",
    "T_RENAME ../outside/secret.txt into the export must fail",
    lambda c: m.RenameRequest(b"//../outside/secret.txt", spath("stolen")),
)


@case("security", "bad-names", name="names.dotdot_clamped_at_root")
def dotdot_clamped(ctx: Context) -> None:
    """T_OPEN //../../file.txt opens the export's file.txt (.. at the root is the root)."""
    reply = ctx.call(m.OpenRequest(b"//../../file.txt\0", O_RD))
    if isinstance(reply, m.ErrorReply):
        raise CheckFailed(f"failed with {errname(reply.errno)}; .. at the root must stay there")
    assert isinstance(reply, m.FdReply)
    ctx.expect(ctx.same_file(reply.fd, ctx.host("file.txt")), "did not open the export's file")


def _created_inside_or_refused(ctx: Context, request: m.Request, name: str) -> None:
    reply = ctx.call(request)
    if isinstance(reply, m.ErrorReply):
        return
    ctx.expect(os.path.lexists(ctx.host(name)), f"succeeded but {name} is not in the export")


@case("security", "bad-names", name="names.dotdot_create_objects")
def dotdot_create_objects(ctx: Context) -> None:
    """T_MKDIR/T_CREATE/T_SYMLINK/T_MKNOD named ../../x create inside the export or fail."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
    _created_inside_or_refused(ctx, m.MkdirRequest(0, 0, b"//../../esc_dir", 0o755), "esc_dir")
    _created_inside_or_refused(
        ctx, m.CreateRequest(b"//../../esc_file", flags, 0o644, 0, 0), "esc_file"
    )
    _created_inside_or_refused(ctx, m.SymlinkRequest(0, 0, b"x", b"//../esc_link"), "esc_link")
    _created_inside_or_refused(
        ctx, m.MknodRequest(0, 0, b"//../esc_fifo", stat.S_IFIFO | 0o600, 0), "esc_fifo"
    )


@case("security", "bad-names", name="names.dotdot_rename_out")
def dotdot_rename_out(ctx: Context) -> None:
    """T_RENAME file.txt to ../../moved.txt keeps it inside the export (or fails)."""
    reply = ctx.call(m.RenameRequest(spath("file.txt"), b"//../../moved.txt"))
    if not isinstance(reply, m.ErrorReply):
        ctx.expect(ctx.host("moved.txt").exists(), "renamed, but not to the export's root")


@case("security", "bad-names", name="names.empty_path")
def empty_path(ctx: Context) -> None:
    """An empty path (or a lone NUL) is ENOENT for every kind of operation."""
    for raw in (b"", b"\0"):
        ctx.err(m.LstatRequest(raw), E.ENOENT)
        ctx.err(m.OpenRequest(raw, O_RD), E.ENOENT)
        ctx.err(m.MkdirRequest(0, 0, raw, 0o755), E.ENOENT)
        ctx.err(m.RemoveRequest(raw), E.ENOENT)
        ctx.err(m.ChmodRequest(raw, 0o777), E.ENOENT)


def _nul_case(
    ctx: Context, request: m.Request, truncated_effect: Callable[[m.Reply], bool]
) -> None:
    """A name with an embedded NUL: EINVAL (SHOULD), or the operation on the name before
    the NUL (tolerated, as QEMU's helper does); anything else fails."""
    what = request.TYPE.name
    reply = ctx.call(request)
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {errname(reply.errno)}, not EINVAL")
        ctx.expect(not truncated_effect(reply), "failed, but acted on the truncated name")
        return
    if isinstance(reply, m.FdReply):
        ctx.expect_inside(reply.fd, what)
    if truncated_effect(reply):
        raise Deviation("embedded-nul-truncates", f"{what}: acted on the name before the NUL")
    raise CheckFailed(f"succeeded ({show(reply)}) without acting on the name before the NUL")


@case("security", "bad-names", name="names.embedded_nul_open")
def embedded_nul_open(ctx: Context) -> None:
    """T_OPEN file.txt\\0/../../outside/secret.txt: EINVAL or file.txt, never the secret."""
    _nul_case(
        ctx,
        m.OpenRequest(b"//file.txt\0/../../outside/secret.txt\0", O_RD),
        lambda r: isinstance(r, m.FdReply) and ctx.same_file(r.fd, ctx.host("file.txt")),
    )


@case("security", "bad-names", name="names.embedded_nul_mkdir")
def embedded_nul_mkdir(ctx: Context) -> None:
    """T_MKDIR newdir\\0junk: EINVAL (SHOULD), or a truncated name (tolerated)."""
    _nul_case(
        ctx,
        m.MkdirRequest(0, 0, b"//newdir\0junk", 0o755),
        lambda r: ctx.host("newdir").exists(),
    )


@case("security", "bad-names", name="names.embedded_nul_remove")
def embedded_nul_remove(ctx: Context) -> None:
    """T_REMOVE empty.txt\\0garbage: EINVAL (SHOULD), or removes empty.txt (tolerated)."""
    _nul_case(
        ctx,
        m.RemoveRequest(b"//empty.txt\0garbage"),
        lambda r: not ctx.host("empty.txt").exists(),
    )


@case("security", "bad-names", name="names.long_component")
def long_component(ctx: Context) -> None:
    """A 256-byte component is ENAMETOOLONG (never truncated to 255)."""
    ctx.err(m.MkdirRequest(0, 0, b"//" + b"a" * 256, 0o755), E.ENAMETOOLONG)
    ctx.err(m.LstatRequest(b"//" + b"b" * 300 + b"\0"), E.ENAMETOOLONG)
    ctx.expect(not ctx.host("a" * 255).exists(), "created a truncated name")


@case("security", "bad-names", name="names.long_path")
def long_path(ctx: Context) -> None:
    """A path over PATH_MAX is resolved, not refused: 5000 bytes through missing
    directories are ENOENT; a 65000-byte component is ENAMETOOLONG (NAME_MAX)."""
    ctx.err(m.LstatRequest(b"//" + b"d/" * 2500 + b"\0"), E.ENOENT)
    ctx.err(m.OpenRequest(b"/" + b"x" * 65000 + b"\0", O_RD), E.ENAMETOOLONG)


@case("security", "bad-names", name="names.non_utf8")
def non_utf8(ctx: Context) -> None:
    """Names are bytes: a non-UTF-8 name is created and found exactly as sent."""
    name = b"\xff\xfe-not-utf8-\x80"
    ctx.ok(m.MkdirRequest(0, 0, b"//" + name, 0o755))
    ctx.expect(os.path.isdir(os.path.join(os.fsencode(ctx.host()), name)), "name was altered")
    ctx.ok(m.LstatRequest(b"//" + name + b"\0"))


@case("security", "bad-names", name="names.remove_root")
def remove_root(ctx: Context) -> None:
    """Removing the export root (/, //.., //.) fails and the export stays."""
    for raw in (b"/", b"//..", b"//."):
        ctx.err(m.RemoveRequest(raw), E.EBUSY, E.EINVAL, E.EPERM, E.ENOTEMPTY)
    ctx.expect(ctx.host("file.txt").exists(), "the export lost its content")


# == symlink escapes =========================================================

_FINAL = [
    ("open_rel", "T_OPEN of a final symlink to ../outside/secret.txt", "escape_rel", "open"),
    ("open_abs", "T_OPEN of a final symlink to the secret's absolute path", "escape_abs", "open"),
    ("open_write", "T_OPEN O_WRONLY|O_TRUNC of a final symlink to outside", "escape_rel", "write"),
    ("truncate", "T_TRUNCATE of a final symlink to outside", "escape_abs", "truncate"),
    ("chmod", "T_CHMOD of a final symlink to outside", "escape_rel", "chmod"),
    ("statfs", "T_STATFS of a final symlink to an outside directory", "escape_dir_abs", "statfs"),
    ("getversion", "T_GETVERSION of a final symlink to outside", "escape_rel", "getversion"),
]
_INTERMEDIATE = [
    ("open_rel", "T_OPEN escape_dir/secret.txt (escape_dir -> ../outside)", "escape_dir", "open"),
    (
        "open_abs",
        "T_OPEN through a symlink to the outside dir's absolute path",
        "escape_dir_abs",
        "open",
    ),
    ("lstat", "T_LSTAT through an intermediate symlink to outside", "escape_dir", "lstat"),
    ("chmod", "T_CHMOD through an intermediate symlink to outside", "escape_dir", "chmod"),
    ("chown", "T_CHOWN through an intermediate symlink to outside", "escape_dir_abs", "chown"),
    ("truncate", "T_TRUNCATE through an intermediate symlink", "escape_dir", "truncate"),
    (
        "utime",
        "T_UTIME through an intermediate symlink (would move the atime)",
        "escape_dir",
        "utime",
    ),
    ("setxattr", "T_LSETXATTR through an intermediate symlink", "escape_dir", "setxattr"),
    ("getxattr", "T_LGETXATTR through an intermediate symlink", "escape_dir_abs", "getxattr"),
    ("listxattr", "T_LLISTXATTR through an intermediate symlink", "escape_dir", "listxattr"),
    ("remove", "T_REMOVE through an intermediate symlink", "escape_dir", "remove"),
    (
        "rename_in",
        "T_RENAME from outside through an intermediate symlink",
        "escape_dir",
        "rename_in",
    ),
    (
        "rename_out",
        "T_RENAME into outside through an intermediate symlink",
        "escape_dir_abs",
        "rename_out",
    ),
    ("mkdir", "T_MKDIR through an intermediate symlink", "escape_dir", "mkdir"),
    ("create", "T_CREATE through an intermediate symlink", "escape_dir_abs", "create"),
    ("symlink", "T_SYMLINK through an intermediate symlink", "escape_dir", "symlink"),
    ("mknod", "T_MKNOD through an intermediate symlink", "escape_dir_abs", "mknod"),
    ("getversion", "T_GETVERSION through an intermediate symlink", "escape_dir", "getversion"),
]


def _op(op: str, path: bytes, new: bytes) -> m.Request:
    """One request of kind ``op`` on ``path`` (a V9fsPath) / ``new`` (a new name)."""
    excl = os.O_RDWR | os.O_CREAT | os.O_EXCL
    makers: dict[str, Callable[[], m.Request]] = {
        "open": lambda: m.OpenRequest(path, O_RD),
        "write": lambda: m.OpenRequest(path, os.O_WRONLY | os.O_TRUNC),
        "truncate": lambda: m.TruncateRequest(path, 0),
        "chmod": lambda: m.ChmodRequest(path, 0o777),
        "chown": lambda: m.ChownRequest(path, 1000, 1000),
        "statfs": lambda: m.StatfsRequest(path),
        "getversion": lambda: m.GetversionRequest(path),
        "lstat": lambda: m.LstatRequest(path),
        "utime": lambda: m.UtimeRequest(path, 0, UTIME_NOW, 0, UTIME_NOW),
        "setxattr": lambda: m.LsetxattrRequest(path, b"user.evil", b"x", 1, 0),
        "getxattr": lambda: m.LgetxattrRequest(100, path, b"user.sentinel"),
        "listxattr": lambda: m.LlistxattrRequest(4096, path),
        "remove": lambda: m.RemoveRequest(path.rstrip(b"\0")),
        "rename_in": lambda: m.RenameRequest(path.rstrip(b"\0"), spath("stolen")),
        "rename_out": lambda: m.RenameRequest(spath("file.txt"), new),
        "mkdir": lambda: m.MkdirRequest(0, 0, new, 0o755),
        "create": lambda: m.CreateRequest(new, excl, 0o644, 0, 0),
        "symlink": lambda: m.SymlinkRequest(0, 0, b"x", new),
        "mknod": lambda: m.MknodRequest(0, 0, new, stat.S_IFIFO | 0o600, 0),
    }
    return makers[op]()


def _through(link: str, kind: str, final: bool) -> Callable[[Context], m.Request]:
    if final:
        return lambda ctx: _op(kind, vpath(link), b"")
    return lambda ctx: _op(kind, vpath(f"{link}/secret.txt"), spath(f"{link}/planted"))


for _name, _doc, _link, _kind in _FINAL:
    _extra = (E.EOPNOTSUPP,) if _kind == "chmod" else ()
    escape_case(
        f"symlink.final_{_name}",
        "symlink-escape",
        _doc,
        _through(_link, _kind, True),
        *ESCAPE_ERRNOS,
        *_extra,
    )
for _name, _doc, _link, _kind in _INTERMEDIATE:
    escape_case(
        f"symlink.intermediate_{_name}", "symlink-escape", _doc, _through(_link, _kind, False)
    )


@case("security", "symlink-escape", name="symlink.final_dangling_create")
def final_dangling_create(ctx: Context) -> None:
    """T_CREATE (no O_EXCL) of dangling symlinks to outside must not create the target."""
    for link in ("escape_dangling", "escape_dangling_abs"):
        contained(
            ctx,
            m.CreateRequest(spath(link), os.O_WRONLY | os.O_CREAT, 0o644, 0, 0),
            (*ESCAPE_ERRNOS, E.EEXIST),
        )


@case("security", "symlink-escape", name="symlink.final_dangling_open_creat")
def final_dangling_open_creat(ctx: Context) -> None:
    """T_OPEN O_CREAT of dangling symlinks to outside must not create the target."""
    for link in ("escape_dangling", "escape_dangling_abs"):
        contained(
            ctx,
            m.OpenRequest(vpath(link), os.O_WRONLY | os.O_CREAT),
            (*ESCAPE_ERRNOS, E.EEXIST, E.EINVAL),
        )


@case("security", "symlink-escape", name="symlink.final_nofollow_ops")
def final_nofollow_ops(ctx: Context) -> None:
    """T_LSTAT/T_CHOWN/T_UTIME/T_LGETXATTR of a symlink to outside act on the link itself."""
    reply = ctx.ok(m.LstatRequest(vpath("escape_abs")))
    ctx.expect(stat.S_ISLNK(reply.st_mode), "lstat followed the link out of the export")
    ctx.ok(m.ChownRequest(vpath("escape_abs"), 1000, 1000))
    ctx.expect(os.lstat(ctx.host("escape_abs")).st_uid == 1000, "the link kept its owner")
    ctx.ok(m.UtimeRequest(vpath("escape_rel"), 5, 0, 5, 0))
    ctx.expect(os.lstat(ctx.host("escape_rel")).st_mtime == 5, "the link's mtime did not change")
    reply = ctx.call(m.LgetxattrRequest(100, vpath("escape_rel"), b"user.sentinel"))
    ctx.expect(isinstance(reply, m.ErrorReply), "read the sentinel's xattr through the link")


@case("security", "symlink-escape", name="symlink.deep_dotdot_clamped")
def deep_dotdot_clamped(ctx: Context) -> None:
    """escape_deep (../../..) resolves to the export root, or fails: never the host root."""
    reply = ctx.call(m.OpenRequest(vpath("escape_deep"), O_RD | os.O_DIRECTORY))
    if isinstance(reply, m.FdReply):
        ctx.expect(ctx.same_file(reply.fd, ctx.host()), "escape_deep is not the export root")
    reply = ctx.call(m.OpenRequest(vpath("escape_deep/file.txt"), O_RD))
    if isinstance(reply, m.FdReply):
        ctx.expect(ctx.same_file(reply.fd, ctx.host("file.txt")), "not the export's file.txt")
    reply = ctx.call(m.OpenRequest(vpath(f"escape_deep/{secret_rel(ctx)}"), O_RD))
    if isinstance(reply, m.FdReply):
        ctx.expect_inside(reply.fd, "T_OPEN")


@case("security", "symlink-escape", name="symlink.loop")
def symlink_loop(ctx: Context) -> None:
    """A symlink to itself gives ELOOP (no hang, no crash)."""
    ctx.err(m.OpenRequest(vpath("loop"), O_RD), E.ELOOP)
    ctx.err(m.OpenRequest(vpath("loop/x"), O_RD), E.ELOOP)


# == races =====================================================================


_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (both always exist)."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2 {a} {b}: {os.strerror(err)}")


class _Swapper:
    """A child process that keeps swapping ``a`` and ``b`` with RENAME_EXCHANGE.

    It stands for the guest (another QEMU thread) renaming inside the export
    while the helper resolves a path. A process rather than a thread, so that
    it really runs alongside the requests; bounded by a stop pipe, a count and
    a time limit.
    """

    MAX_SWAPS: Final = 50_000_000
    MAX_SECONDS: Final = 60.0

    def __init__(self, a: Path, b: Path) -> None:
        self.a, self.b = a, b
        self.swaps = 0

    def _child(self, stop: int, report: int) -> None:  # pragma: no cover - runs forked
        n = 0
        deadline = time.monotonic() + self.MAX_SECONDS
        os.set_blocking(stop, False)
        try:
            while n < self.MAX_SWAPS and time.monotonic() < deadline:
                for _ in range(64):
                    exchange(self.a, self.b)
                n += 64
                try:
                    if os.read(stop, 1) == b"":
                        break
                except BlockingIOError:
                    continue
        finally:
            os.write(report, n.to_bytes(8, "little"))
            os._exit(0)

    def __enter__(self) -> _Swapper:
        stop_r, self._stop_w = os.pipe()
        self._report_r, report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.close(self._stop_w)
            self._child(stop_r, report_w)
        os.close(stop_r)
        os.close(report_w)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._stop_w)  # EOF: the child stops
        try:
            os.waitpid(self.pid, 0)
            self.swaps = int.from_bytes(os.read(self._report_r, 8), "little")
        finally:
            os.close(self._report_r)


def _race(
    ctx: Context,
    first: Callable[[Path], None],
    second: Callable[[Path], None],
    request: m.Request,
) -> None:
    """Run ``request`` RACE_ITERATIONS times while "race" is swapped between two objects."""
    first(ctx.host("race"))
    second(ctx.host("race_other"))
    ok = errors = 0
    with _Swapper(ctx.host("race"), ctx.host("race_other")) as swapper:
        for _ in range(RACE_ITERATIONS):
            reply = ctx.call(request)
            if isinstance(reply, m.FdReply):
                ctx.expect_inside(reply.fd, f"{request.TYPE.name} during the race")
                ctx.close(reply.fd)
            if isinstance(reply, m.ErrorReply):
                errors += 1
            else:
                ok += 1
    ctx.notes.append(f"{RACE_ITERATIONS} requests, {ok} ok, {errors} errors, {swapper.swaps} swaps")


def _decoy_dir(rel: str) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        (p / rel).parent.mkdir(parents=True)
        (p / rel).write_bytes(DECOY_CONTENT)

    return make


def _symlink_to(target: str) -> Callable[[Path], None]:
    return lambda p: os.symlink(target, p)


@case("security", "race", name="race.intermediate_swap_abs")
def race_intermediate_abs(ctx: Context) -> None:
    """T_OPEN race/<host path of the secret> while race swaps between a dir and a link to /."""
    rel = secret_rel(ctx)
    _race(
        ctx,
        _decoy_dir(rel),
        _symlink_to("/"),
        m.OpenRequest(vpath(f"race/{rel}"), O_RD),
    )


@case("security", "race", name="race.intermediate_swap_dotdot")
def race_intermediate_dotdot(ctx: Context) -> None:
    """T_OPEN race/secret.txt while race swaps between a dir and a link to ../outside."""
    _race(
        ctx,
        _decoy_dir("secret.txt"),
        _symlink_to("../outside"),
        m.OpenRequest(vpath("race/secret.txt"), O_RD),
    )


@case("security", "race", name="race.final_swap_truncate")
def race_final_truncate(ctx: Context) -> None:
    """T_TRUNCATE race while race swaps between a file and a symlink to the secret."""

    def decoy(p: Path) -> None:
        p.write_bytes(DECOY_CONTENT)

    _race(
        ctx,
        decoy,
        _symlink_to(str(ctx.ws.secret)),
        m.TruncateRequest(vpath("race"), 0),
    )


@case("security", "race", name="race.final_swap_create")
def race_final_create(ctx: Context) -> None:
    """T_CREATE race (no O_EXCL) while race swaps between an empty dir and a dangling link."""

    def empty_dir(p: Path) -> None:
        p.mkdir()  # creating over it fails with EISDIR; over the link it must not escape

    _race(
        ctx,
        empty_dir,
        _symlink_to("../outside/planted_race"),
        m.CreateRequest(spath("race"), os.O_WRONLY | os.O_CREAT, 0o644, 0, 0),
    )


# == magic links ===============================================================

_PR_CAPBSET_DROP: Final = 24


def _drop_all_capabilities() -> None:  # pragma: no cover - runs in the child
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)


def _own_helper(ctx: Context, extra_fds: tuple[int, ...] = ()) -> HelperSession | None:
    """A helper of the case's own; None if it refused to start (a clean, non-signal exit)."""
    from ....errors import HelperStartError

    try:
        helper = HelperSession(
            ctx.argv, ctx.ws.export, ctx.mode, rundir=ctx.ws.rundir, extra_fds=extra_fds
        )
    except HelperStartError as exc:
        if exc.returncode is not None and exc.returncode < 0:
            raise CheckFailed(f"the helper crashed at start: {exc}") from None
        ctx.notes.append("the helper refused to serve this export")
        return None
    # fd mode: a refusal shows as EOF on the first request
    try:
        reply = helper.call(m.LstatRequest(vpath("")))
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
            reply = helper.call(m.OpenRequest(p + b"\0", flags))
            if isinstance(reply, m.FdReply):
                ctx.adopt(reply.fd)
                ctx.expect_inside(reply.fd, f"T_OPEN {p!r}")
                opened += 1
        reply = helper.call(m.LstatRequest(p + b"\0"))
        if isinstance(reply, m.StatReply):
            secret = os.lstat(ctx.ws.secret)
            ctx.expect(
                (reply.st_dev, reply.st_ino) != (secret.st_dev, secret.st_ino),
                f"T_LSTAT {p!r} reached the secret",
            )
    return opened


@case("security", "magic-link", name="magic.proc_self_fd_inherited", fresh=True)
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


@case("security", "magic-link", name="magic.proc_pid_root", fresh=True)
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


# == hard links ================================================================

escape_case(
    "hardlink.dotdot_oldpath",
    "hard-link",
    "T_LINK ../outside/secret.txt into the export must fail",
    lambda c: m.LinkRequest(b"//../outside/secret.txt\0", spath("stolen")),
)
escape_case(
    "hardlink.absolute_oldpath",
    "hard-link",
    "T_LINK of the secret's absolute host path must fail",
    lambda c: m.LinkRequest(os.fsencode(c.ws.secret) + b"\0", spath("stolen")),
)
escape_case(
    "hardlink.intermediate_oldpath",
    "hard-link",
    "T_LINK escape_dir/secret.txt (through a symlink out) must fail",
    lambda c: m.LinkRequest(vpath("escape_dir/secret.txt"), spath("stolen")),
)
escape_case(
    "hardlink.newpath_outside",
    "hard-link",
    "T_LINK file.txt to escape_dir/planted must not plant a link outside",
    lambda c: m.LinkRequest(vpath("file.txt"), spath("escape_dir/planted")),
)


@case("security", "hard-link", name="hardlink.final_symlink_to_outside")
def hardlink_symlink(ctx: Context) -> None:
    """T_LINK of a symlink to the secret links the symlink (or fails), never the secret."""
    reply = ctx.call(m.LinkRequest(vpath("escape_abs"), spath("hl")))
    if isinstance(reply, m.ErrorReply):
        return
    ctx.expect(stat.S_ISLNK(os.lstat(ctx.host("hl")).st_mode), "the new name is not the link")


# == special files ===============================================================


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


_SPECIAL: list[tuple[str, str, Callable[[], m.Request], tuple[int, ...]]] = [
    (
        "open_fifo",
        "T_OPEN O_RDONLY of a FIFO: ENXIO without blocking",
        lambda: m.OpenRequest(vpath("fifo"), O_RD),
        (E.ENXIO,),
    ),
    (
        "open_fifo_wronly",
        "T_OPEN O_WRONLY of a FIFO: ENXIO without blocking",
        lambda: m.OpenRequest(vpath("fifo"), os.O_WRONLY),
        (E.ENXIO,),
    ),
    (
        "open_fifo_nonblock",
        "T_OPEN O_RDONLY|O_NONBLOCK of a FIFO: ENXIO",
        lambda: m.OpenRequest(vpath("fifo"), O_RD | os.O_NONBLOCK),
        (E.ENXIO,),
    ),
    (
        "open_fifo_via_symlink",
        "T_OPEN of a symlink to a FIFO: ENXIO without blocking",
        lambda: m.OpenRequest(vpath("link_fifo"), O_RD),
        (E.ENXIO,),
    ),
    (
        "create_existing_fifo",
        "T_CREATE (no O_EXCL) on an existing FIFO: ENXIO, no block",
        lambda: m.CreateRequest(spath("fifo"), os.O_WRONLY | os.O_CREAT, 0o644, 0, 0),
        (E.ENXIO,),
    ),
    (
        "open_chardev",
        "T_OPEN of a character device: ENXIO, no fd",
        lambda: m.OpenRequest(vpath("chardev"), os.O_RDWR),
        (E.ENXIO,),
    ),
    (
        "open_socket",
        "T_OPEN of a socket file: ENXIO",
        lambda: m.OpenRequest(vpath("sock"), os.O_RDWR),
        (E.ENXIO,),
    ),
    (
        "getversion_fifo",
        "T_GETVERSION of a FIFO must not open (block on) it",
        lambda: m.GetversionRequest(vpath("fifo")),
        (E.ENOTTY, E.ENXIO),
    ),
    (
        "getversion_chardev",
        "T_GETVERSION of a device: ENOTTY or ENXIO",
        lambda: m.GetversionRequest(vpath("chardev")),
        (E.ENOTTY, E.ENXIO),
    ),
    (
        "truncate_fifo",
        "T_TRUNCATE of a FIFO: EINVAL without opening it",
        lambda: m.TruncateRequest(vpath("fifo"), 0),
        (E.EINVAL,),
    ),
    (
        "truncate_chardev",
        "T_TRUNCATE of a character device: EINVAL",
        lambda: m.TruncateRequest(vpath("chardev"), 0),
        (E.EINVAL,),
    ),
]


def _special_case(
    name: str, doc: str, make: Callable[[], m.Request], errnos: tuple[int, ...]
) -> None:
    def run(ctx: Context) -> None:
        _special(ctx, make(), errnos)

    run.__doc__ = doc
    case("security", "special-file", name=f"special.{name}")(run)


for _sname, _sdoc, _smake, _serr in _SPECIAL:
    _special_case(_sname, _sdoc, _smake, _serr)


@case("security", "special-file", name="special.metadata_ops_do_not_open")
def special_metadata(ctx: Context) -> None:
    """T_STATFS/T_CHMOD/T_LSTAT of a FIFO answer without blocking (they need no open)."""
    for request in (
        m.StatfsRequest(vpath("fifo")),
        m.ChmodRequest(vpath("fifo"), 0o600),
        m.LstatRequest(vpath("fifo")),
    ):
        ctx.call(request, timeout=SPECIAL_TIMEOUT)


# == credentials ===============================================================


@case("security", "credentials", name="creds.setgid_dir_root_then_user", fresh=True)
def creds_setgid_root_then_user(ctx: Context) -> None:
    """Guest root creates in a setgid dir (uid 0, gid N), then a user creates: both work."""
    ctx.ok(m.MkdirRequest(0, 1234, spath("sgid_dir/by_root"), 0o755))
    st = os.lstat(ctx.host("sgid_dir/by_root"))
    ctx.expect((st.st_uid, st.st_gid) == (0, 1234), f"owner {st.st_uid}:{st.st_gid}")
    ctx.ok(m.MkdirRequest(1000, 1000, spath("by_user"), 0o755))
    st = os.lstat(ctx.host("by_user"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1000), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.uid0_gidN_then_chown", fresh=True)
def creds_uid0_then_chown(ctx: Context) -> None:
    """After a uid 0 / gid N request the helper keeps its privileges (T_CHOWN still works)."""
    ctx.ok(m.MkdirRequest(0, 1000, spath("d0"), 0o755))
    ctx.ok(m.ChownRequest(vpath("file.txt"), 1234, 1234))
    st = os.lstat(ctx.host("file.txt"))
    ctx.expect((st.st_uid, st.st_gid) == (1234, 1234), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.uidN_gid0_then_root", fresh=True)
def creds_uidN_gid0(ctx: Context) -> None:
    """A uid N / gid 0 request, then root-owned creation and a chown: all work."""
    ctx.ok(m.MkdirRequest(1000, 0, spath("dN"), 0o755))
    ctx.ok(m.MkdirRequest(0, 0, spath("d00"), 0o700))
    ctx.ok(m.ChownRequest(vpath("file.txt"), 1000, 1000))
    st = os.lstat(ctx.host("d00"))
    ctx.expect((st.st_uid, st.st_gid) == (0, 0), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.minus_one_ids", fresh=True)
def creds_minus_one(ctx: Context) -> None:
    """uid/gid -1 in a creating request: refused (EINVAL) or served, never a privilege change."""
    reply = ctx.call(m.MkdirRequest(0xFFFFFFFF, 0xFFFFFFFF, spath("dm"), 0o755))
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {errname(reply.errno)}, not EINVAL")
    ctx.ok(m.ChownRequest(vpath("file.txt"), 1234, 1234))
    ctx.ok(m.MkdirRequest(1000, 1000, spath("after"), 0o755))
    st = os.lstat(ctx.host("after"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1000), f"owner {st.st_uid}:{st.st_gid}")


@case("security", "credentials", name="creds.setgid_dir_inherits")
def creds_setgid_inherits(ctx: Context) -> None:
    """A directory made in a setgid directory with the dir's group gets the setgid bit too."""
    ctx.ok(m.MkdirRequest(1000, 1234, spath("sgid_dir/sub"), 0o755))
    st = os.lstat(ctx.host("sgid_dir/sub"))
    ctx.expect((st.st_uid, st.st_gid) == (1000, 1234), f"owner {st.st_uid}:{st.st_gid}")
    ctx.expect(bool(st.st_mode & stat.S_ISGID), "the setgid bit was not inherited")


@case("security", "credentials", name="creds.chown_clears_setid")
def creds_chown_clears(ctx: Context) -> None:
    """T_CHOWN of a setuid/setgid executable clears both bits (no set-id file for a new owner)."""
    ctx.ok(m.ChownRequest(vpath("suid.bin"), 1001, 1001))
    mode = os.lstat(ctx.host("suid.bin")).st_mode
    ctx.expect(not mode & (stat.S_ISUID | stat.S_ISGID), f"mode {stat.filemode(mode)} kept set-id")


@case("security", "credentials", name="creds.write_through_fd_clears_setuid")
def creds_write_clears(ctx: Context) -> None:
    """A write through a passed fd by an unprivileged client clears the setuid bit."""
    fd = ctx.fd(m.OpenRequest(vpath("suid.bin"), os.O_WRONLY | os.O_APPEND))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the unprivileged writer
        try:
            os.setgroups([])
            os.setgid(4321)
            os.setuid(4321)
            os.write(fd, b"# appended\n")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    ctx.expect(os.waitstatus_to_exitcode(status) == 0, "the unprivileged write failed")
    mode = os.lstat(ctx.host("suid.bin")).st_mode
    ctx.expect(not mode & stat.S_ISUID, f"mode {stat.filemode(mode)} kept setuid after a write")


@case("security", "credentials", name="creds.mknod_device_as_user")
def creds_mknod_device(ctx: Context) -> None:
    """A block device requested by uid 1000 (or by gid N) is refused with EPERM."""
    dev = os.makedev(8, 0)
    ctx.err(m.MknodRequest(1000, 1000, spath("blk"), stat.S_IFBLK | 0o666, dev), E.EPERM)
    ctx.err(m.MknodRequest(0, 1000, spath("blk2"), stat.S_IFBLK | 0o666, dev), E.EPERM)
    ctx.expect(not os.path.lexists(ctx.host("blk")), "a device node was created")


# == device nodes ==============================================================
#
# A device node the helper makes (or opens) hands the guest a host device: the
# node is a name for any device the host has, whatever the device's own mode
# in /dev. The attack uses 10:232, /dev/kvm, which is root-only on the host.

#: /dev/kvm's device number (crw------- root root on the host)
KVM_RDEV: Final = os.makedev(10, 232)
#: /dev/loop0's device number, the block device the cases ask for
LOOP0_RDEV: Final = os.makedev(7, 0)
#: the unprivileged user that stands for QEMU when it uses a passed fd
ATTACKER_ID: Final = 4321
#: inotify(7): an event for every open (not for O_PATH, stat or truncate(2))
_IN_OPEN: Final = 0x20


@case("security", "device-node", name="device.mknod_refused", fresh=True)
def device_mknod_refused(ctx: Context) -> None:
    """T_MKNOD of a character (10:232, /dev/kvm) or block device as uid 0 / gid 0
    fails with EPERM and makes nothing (the helper must not make device nodes)."""
    for name, kind, rdev in (("kvm", stat.S_IFCHR, KVM_RDEV), ("loop0", stat.S_IFBLK, LOOP0_RDEV)):
        reply = ctx.call(m.MknodRequest(0, 0, spath(name), kind | 0o666, rdev))
        ctx.expect(not os.path.lexists(ctx.host(name)), f"made the device node {name!r}")
        ctx.expect(
            isinstance(reply, m.ErrorReply) and reply.errno == E.EPERM,
            f"T_MKNOD of {name!r} answered {show(reply)}; expected EPERM",
        )


def _unprivileged_open(dirfd: int, name: str) -> str | None:
    """What an unprivileged process (uid/gid ATTACKER_ID, no capabilities) gets
    from openat(dirfd, name, O_RDWR): a description of the device, or None."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the attacker holding the helper's fd
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(ATTACKER_ID, ATTACKER_ID, ATTACKER_ID)
            os.setresuid(ATTACKER_ID, ATTACKER_ID, ATTACKER_ID)
            try:
                fd = os.open(name, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dirfd)
            except OSError:
                os._exit(0)
            st = os.fstat(fd)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = "char" if stat.S_ISCHR(st.st_mode) else "block"
                rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
                os.write(wfd, f"{kind} device {rdev}".encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(wfd)
    try:
        got = os.read(rfd, 200).decode()
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    return got or None


@case("security", "device-node", name="device.mknod_then_open_via_dir_fd", fresh=True)
def device_mknod_attack(ctx: Context) -> None:
    """The whole attack: T_MKNOD c 10:232 0666 as uid 0, T_OPEN "/" O_DIRECTORY, then an
    unprivileged openat() of the node through that fd must not yield a device."""
    reply = ctx.call(m.MknodRequest(0, 0, spath("kvm"), stat.S_IFCHR | 0o666, KVM_RDEV))
    dirfd = ctx.fd(m.OpenRequest(vpath(""), os.O_RDONLY | os.O_DIRECTORY))
    got = _unprivileged_open(dirfd, "kvm")
    ctx.expect(
        got is None,
        f"T_MKNOD answered {show(reply)}, then uid {ATTACKER_ID} opened {got} read-write "
        "through the helper's directory fd",
    )
    ctx.expect(not os.path.lexists(ctx.host("kvm")), f"T_MKNOD answered {show(reply)}: node made")


class _OpenWatch:
    """inotify IN_OPEN on one host path: did anything open it (O_PATH aside)?"""

    def __init__(self, path: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(self.fd, bytes(path), _IN_OPEN) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify on {path}: {os.strerror(err)}")

    def opened(self) -> bool:
        """Whether an open happened since the last call (the events are consumed)."""
        try:
            return bool(os.read(self.fd, 4096))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


@case("security", "device-node", name="device.existing_node_never_opened")
def device_existing_never_opened(ctx: Context) -> None:
    """A device node already in the export (10:232 and 1:3, made on the host) is never
    opened: T_OPEN, T_CREATE without O_EXCL, T_TRUNCATE and T_GETVERSION refuse it with
    ENXIO/EINVAL, pass back no fd, and inotify sees no open of the node."""
    os.mknod(ctx.host("kvm"), stat.S_IFCHR | 0o666, KVM_RDEV)
    problems: list[str] = []
    for name in ("kvm", "chardev"):
        watch = _OpenWatch(ctx.host(name))
        try:
            for label, request, errnos in (
                ("T_OPEN O_RDWR", m.OpenRequest(vpath(name), os.O_RDWR), (E.ENXIO,)),
                (
                    "T_OPEN O_RDONLY|O_NONBLOCK",
                    m.OpenRequest(vpath(name), os.O_RDONLY | os.O_NONBLOCK),
                    (E.ENXIO,),
                ),
                (
                    "T_CREATE O_RDWR|O_CREAT",
                    m.CreateRequest(spath(name), os.O_RDWR | os.O_CREAT, 0o666, 0, 0),
                    (E.ENXIO,),
                ),
                ("T_TRUNCATE", m.TruncateRequest(vpath(name), 0), (E.EINVAL,)),
                ("T_GETVERSION", m.GetversionRequest(vpath(name)), (E.ENXIO, E.EINVAL)),
            ):
                what = f"{label} of {name!r}"
                reply = ctx.call(request, timeout=SPECIAL_TIMEOUT)
                if watch.opened():
                    problems.append(f"{what} opened the device")
                if isinstance(reply, m.FdReply):
                    mode = os.fstat(reply.fd).st_mode
                    problems.append(f"{what} passed back an fd ({stat.filemode(mode)})")
                elif not isinstance(reply, m.ErrorReply) or reply.errno not in errnos:
                    problems.append(f"{what} answered {show(reply)}")
        finally:
            watch.close()
    ctx.expect(not problems, "; ".join(problems))


# == xattr abuse ===============================================================


@case("security", "xattr-abuse", name="xattr.trusted_set")
def xattr_trusted_set(ctx: Context) -> None:
    """T_LSETXATTR trusted.* is refused (it needs CAP_SYS_ADMIN, which a helper lacks)."""
    ctx.err(m.LsetxattrRequest(vpath("file.txt"), b"trusted.evil", b"x", 1, 0), E.EPERM)
    ctx.expect("trusted.evil" not in os.listxattr(ctx.host("file.txt")), "trusted.evil stored")


@case("security", "xattr-abuse", name="xattr.trusted_hidden")
def xattr_trusted_hidden(ctx: Context) -> None:
    """A trusted.* attribute set by the host is neither readable nor listed."""
    reply = ctx.call(m.LgetxattrRequest(100, vpath("file.txt"), b"trusted.hidden"))
    ctx.expect(isinstance(reply, m.ErrorReply), "read a trusted.* attribute")
    reply = ctx.ok(m.LlistxattrRequest(4096, vpath("file.txt")))
    ctx.expect(b"trusted." not in reply.value, f"listed trusted.*: {reply.value!r}")


@case("security", "xattr-abuse", name="xattr.security_capability")
def xattr_security_capability(ctx: Context) -> None:
    """T_LSETXATTR security.capability (file caps granting CAP_SYS_ADMIN) is refused."""
    caps = (0x02000001).to_bytes(4, "little") + (1 << 21).to_bytes(4, "little") + bytes(12)
    ctx.err(
        m.LsetxattrRequest(vpath("suid.bin"), b"security.capability", caps, len(caps), 0),
        E.EPERM,
    )
    ctx.expect("security.capability" not in os.listxattr(ctx.host("suid.bin")), "file caps stored")


@case("security", "xattr-abuse", name="xattr.security_other")
def xattr_security_other(ctx: Context) -> None:
    """T_LSETXATTR security.evil/security.ima is refused (they need CAP_SYS_ADMIN)."""
    for name in (b"security.evil", b"security.ima"):
        ctx.err(
            m.LsetxattrRequest(vpath("file.txt"), name, b"x", 1, 0),
            E.EPERM,
            E.EOPNOTSUPP,
            E.EACCES,
        )


def _big_xattr(ctx: Context, size: int) -> bytes:
    """A tmpfs in the export (ext4 cannot hold 64 KiB values) with user.big of ``size`` bytes.

    Mounted before the case's helper starts (the cases are ``fresh``): a
    helper in a private mount namespace of its own sees no mount made
    under the export after it started."""
    mnt = ctx.ws.mount_tmpfs("big")
    (mnt / "f").write_bytes(b"")
    value = bytes((i * 7) & 0xFF for i in range(size))
    try:
        os.setxattr(mnt / "f", "user.big", value)
    except OSError as exc:
        raise CheckFailed(
            f"cannot set up the case: a {size}-byte user xattr on tmpfs failed ({exc.strerror}); "
            "user xattrs on tmpfs need Linux 6.6 or later"
        ) from None
    return value


@case("security", "xattr-abuse", name="xattr.get_65534_fits", fresh=True)
def xattr_65534(ctx: Context) -> None:
    """A 65534-byte value is the largest that fits a reply: returned whole."""
    value = _big_xattr(ctx, 65534)
    reply = ctx.ok(m.LgetxattrRequest(65534, vpath("big/f"), b"user.big"))
    ctx.expect(reply == m.XattrValueReply(value), "value not returned whole")


@case("security", "xattr-abuse", name="xattr.get_65535_refused", fresh=True)
def xattr_65535(ctx: Context) -> None:
    """A 65535-byte value does not fit a reply: ENOBUFS/E2BIG/ERANGE, never truncated."""
    _big_xattr(ctx, 65535)
    ctx.err(m.LgetxattrRequest(65535, vpath("big/f"), b"user.big"), *XATTR_SIZE_ERRNOS)


@case("security", "xattr-abuse", name="xattr.get_65536_no_wrap", fresh=True)
def xattr_65536(ctx: Context) -> None:
    """A 65536-byte value with size 65536 must fail, not wrap to an empty string."""
    _big_xattr(ctx, 65536)
    reply = ctx.call(m.LgetxattrRequest(65536, vpath("big/f"), b"user.big"))
    if isinstance(reply, m.XattrValueReply):
        raise CheckFailed(
            f"T_SUCCESS with a {len(reply.value)}-byte value for a 65536-byte attribute "
            "(the 16-bit length wrapped: silent data loss)"
        )
    ctx.expect(
        isinstance(reply, m.ErrorReply) and reply.errno in XATTR_SIZE_ERRNOS,
        f"answered {show(reply)}",
    )


@case("security", "xattr-abuse", name="xattr.get_negative_size")
def xattr_get_negative(ctx: Context) -> None:
    """T_LGETXATTR size -1: EINVAL or ERANGE, and the helper lives."""
    ctx.err(m.LgetxattrRequest(-1, vpath("file.txt"), b"user.comment"), E.EINVAL, E.ERANGE)


@case("security", "xattr-abuse", name="xattr.list_negative_size")
def xattr_list_negative(ctx: Context) -> None:
    """T_LLISTXATTR size -1: EINVAL or ERANGE, and the helper lives."""
    ctx.err(m.LlistxattrRequest(-0x80000000, vpath("file.txt")), E.EINVAL, E.ERANGE)


@case("security", "xattr-abuse", name="xattr.readlink_negative_bufsize")
def readlink_negative(ctx: Context) -> None:
    """T_READLINK bufsize -1: EINVAL, and the helper lives."""
    ctx.err(m.ReadlinkRequest(vpath("link_file"), -1), E.EINVAL)


@case("security", "xattr-abuse", name="xattr.huge_sizes_clamped")
def xattr_huge_sizes(ctx: Context) -> None:
    """Sizes of INT_MAX are clamped, not allocated: the values come back normally."""
    reply = ctx.ok(m.LgetxattrRequest(0x7FFFFFFF, vpath("file.txt"), b"user.comment"))
    ctx.expect(isinstance(reply, m.XattrValueReply) and reply.value == b"a comment", show(reply))
    reply = ctx.ok(m.ReadlinkRequest(vpath("link_file"), 0x7FFFFFFF))
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), show(reply))


@case("security", "xattr-abuse", name="xattr.set_size_beyond_value")
def xattr_set_overread(ctx: Context) -> None:
    """T_LSETXATTR with size larger than the value: EINVAL, nothing stored (no heap over-read)."""
    reply = ctx.call(m.LsetxattrRequest(vpath("file.txt"), b"user.over", b"abc", 64, 0))
    stored = (
        os.getxattr(ctx.host("file.txt"), "user.over")
        if not isinstance(reply, m.ErrorReply)
        else None
    )
    if stored is not None:
        raise CheckFailed(f"stored {len(stored)} bytes for a 3-byte value: {stored[:16]!r}...")
    ctx.expect(
        isinstance(reply, m.ErrorReply) and reply.errno == E.EINVAL, f"answered {show(reply)}"
    )


@case("security", "xattr-abuse", name="xattr.set_negative_size")
def xattr_set_negative(ctx: Context) -> None:
    """T_LSETXATTR size -1: EINVAL."""
    ctx.err(m.LsetxattrRequest(vpath("file.txt"), b"user.neg", b"abc", -1, 0), E.EINVAL)


# == information leaks ===========================================================


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


# == framing ===================================================================


def _frame(
    request: m.Request,
    *,
    mtype: int | None = None,
    size: int | None = None,
    extra: bytes = b"",
    cut: int = 0,
) -> bytes:
    """A valid encoding with its header's type/size replaced, bytes appended or cut."""
    data = encode_request(request)
    t, s = H.unpack_from(data, 0)
    payload = data[HEADER_SIZE:] + extra
    if cut:
        payload = payload[:-cut]
    return H.pack(t if mtype is None else mtype, s + len(extra) if size is None else size) + payload


def _expect_hangup(ctx: Context, data: bytes, *, shutdown: bool = False) -> None:
    ctx.helper.send_raw(data)
    if shutdown:
        ctx.helper.shutdown_write()
    got, eof = ctx.helper.read_raw(3.0)
    ctx.expect(not got, f"the helper replied {got[:16].hex()} to a fatal frame")
    ctx.expect(eof, "the helper did not close the connection")


_LSTAT = m.LstatRequest(vpath("file.txt"))

_FATAL: list[tuple[str, str, Callable[[], bytes], bool]] = [
    (
        "truncated_header",
        "EOF inside a header: no reply, the helper exits",
        lambda: encode_request(_LSTAT)[:5],
        True,
    ),
    (
        "truncated_payload",
        "EOF inside a payload: no reply, the helper exits",
        lambda: encode_request(_LSTAT)[:-3],
        True,
    ),
    (
        "oversized",
        "size 65537: no reply, the helper exits without reading it",
        lambda: _frame(_LSTAT, size=65537),
        False,
    ),
    (
        "size_u32_max",
        "size 0xffffffff (compared unsigned): no reply, exit",
        lambda: _frame(_LSTAT, size=0xFFFFFFFF),
        False,
    ),
    (
        "type_t_success",
        "type 0 (T_SUCCESS) as a request: no reply, exit",
        lambda: _frame(_LSTAT, mtype=MessageType.T_SUCCESS),
        False,
    ),
    (
        "type_t_error",
        "type 1 (T_ERROR) as a request: no reply, exit",
        lambda: _frame(_LSTAT, mtype=MessageType.T_ERROR),
        False,
    ),
    (
        "type_22",
        "type 22 (one past T_GETVERSION): no reply, exit",
        lambda: _frame(_LSTAT, mtype=22),
        False,
    ),
    (
        "type_sign_bit",
        "type 0x80000008 (T_LSTAT with the sign bit): no reply, exit",
        lambda: _frame(_LSTAT, mtype=0x80000008),
        False,
    ),
]


def _fatal_case(name: str, doc: str, make: Callable[[], bytes], shutdown: bool) -> None:
    def run(ctx: Context) -> None:
        _expect_hangup(ctx, make(), shutdown=shutdown)

    run.__doc__ = doc
    case("security", "framing", name=f"frame.{name}", fatal=True)(run)


for _fname, _fdoc, _fmake, _fshut in _FATAL:
    _fatal_case(_fname, _fdoc, _fmake, _fshut)


def _in_sync(ctx: Context) -> None:
    reply = ctx.ok(m.ReadlinkRequest(vpath("link_file"), 4096))
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), "out of step after the bad frame")


@case("security", "framing", name="frame.payload_too_short")
def frame_short(ctx: Context) -> None:
    """Payloads shorter than their fields: ENOBUFS in the right shape, still in step."""
    for req, size in (
        (_LSTAT, 1),
        (m.OpenRequest(vpath("file.txt"), O_RD), 3),
        (m.ChownRequest(vpath("file.txt"), 1, 1), 12),
    ):
        data = encode_request(req)
        t, _ = H.unpack_from(data, 0)
        reply = ctx.helper.call_raw(H.pack(t, size) + data[HEADER_SIZE : HEADER_SIZE + size], req)
        ctx.expect(reply == m.ErrorReply(E.ENOBUFS), f"{req.TYPE.name}: {show(reply)}")
        _in_sync(ctx)
    ctx.expect(os.lstat(ctx.host("file.txt")).st_uid == 0, "the short chown was performed")


@case("security", "framing", name="frame.string_overrun")
def frame_string_overrun(ctx: Context) -> None:
    """A string length running past the payload: ENOBUFS, still in step."""
    data = bytearray(encode_request(_LSTAT))
    data[HEADER_SIZE : HEADER_SIZE + 2] = (200).to_bytes(2, "little")
    reply = ctx.helper.call_raw(bytes(data), _LSTAT)
    ctx.expect(reply == m.ErrorReply(E.ENOBUFS), show(reply))
    _in_sync(ctx)


@case("security", "framing", name="frame.short_create_does_nothing")
def frame_short_create(ctx: Context) -> None:
    """A T_CREATE cut after its path: bare -ENOBUFS, no fd, no file."""
    req = m.CreateRequest(spath("short_new"), os.O_RDWR | os.O_CREAT, 0o644, 0, 0)
    reply = ctx.helper.call_raw(_frame(req, cut=12, size=len(spath("short_new")) + 2 + 4), req)
    ctx.expect(reply == m.ErrorReply(E.ENOBUFS), show(reply))
    ctx.expect(not ctx.host("short_new").exists(), "the file was created")
    _in_sync(ctx)


@case("security", "framing", name="frame.trailing_bytes")
def frame_trailing(ctx: Context) -> None:
    """Trailing payload bytes: ignored (tolerated) or EINVAL; the stream stays in step."""
    reply = ctx.helper.call_raw(_frame(_LSTAT, extra=b"\xaa" * 7), _LSTAT)
    _in_sync(ctx)
    if isinstance(reply, m.ErrorReply):
        ctx.expect(reply.errno == E.EINVAL, f"failed with {errname(reply.errno)}")
        return
    ctx.expect(isinstance(reply, m.StatReply), show(reply))
    raise Deviation("trailing-bytes-ignored", "extra payload bytes were read and ignored")


@case("security", "framing", name="frame.max_size_accepted")
def frame_max_size(ctx: Context) -> None:
    """A frame of exactly 65536 payload bytes is read and answered (here ENAMETOOLONG)."""
    req = m.LstatRequest(b"/" + b"m" * 65533)
    data = encode_request(req)
    ctx.expect(H.unpack_from(data, 0)[1] == 65536, "test frame is not 65536 bytes")
    reply = ctx.helper.call_raw(data, req)
    ctx.expect(reply == m.ErrorReply(E.ENAMETOOLONG), show(reply))
    _in_sync(ctx)


@case("security", "framing", name="frame.pipelined_burst")
def frame_pipelined(ctx: Context) -> None:
    """120 mixed requests in one write: 120 replies, in order, fds with their replies."""
    reqs: list[m.Request] = []
    for i in range(30):
        reqs += [
            m.OpenRequest(vpath("file.txt" if i % 2 else "dir/nested.txt"), O_RD),
            m.LstatRequest(vpath("missing")),
            m.ReadlinkRequest(vpath("link_file"), 4096),
            m.LgetxattrRequest(100, vpath("file.txt"), b"user.comment"),
        ]
    ctx.helper.pipeline(reqs)
    for i, req in enumerate(reqs):
        reply = ctx.helper.next_reply()
        if isinstance(reply, m.FdReply):
            ctx.adopt(reply.fd)
            want = FILE_CONTENT if (i // 4) % 2 else b"nested file\n"
            ctx.expect(read_all(reply.fd) == want, f"reply {i}: fd of the wrong file")
        elif isinstance(req, m.LstatRequest):
            ctx.expect(reply == m.ErrorReply(E.ENOENT), f"reply {i}: {show(reply)}")
        elif isinstance(req, m.ReadlinkRequest):
            ctx.expect(reply == m.ReadlinkReply(b"file.txt"), f"reply {i}: {show(reply)}")
        else:
            ctx.expect(reply == m.XattrValueReply(b"a comment"), f"reply {i}: {show(reply)}")


@case("security", "framing", name="frame.byte_at_a_time")
def frame_bytewise(ctx: Context) -> None:
    """A request sent one byte per write (1 ms apart) is parsed the same."""
    data = encode_request(m.ReadlinkRequest(vpath("link_file"), 4096))
    ctx.helper.conn.send_request(m.ReadlinkRequest(vpath("link_file"), 4096))
    for i in range(len(data)):
        ctx.helper.send_raw(data[i : i + 1])
        time.sleep(0.001)
    reply = ctx.helper.next_reply()
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), show(reply))


@case("security", "framing", name="frame.unsolicited_fds")
def frame_unsolicited_fds(ctx: Context) -> None:
    """Descriptors sent *to* the helper with a request are not kept (fd count unchanged)."""
    _in_sync(ctx)
    base = procfs.settled_fd_count(ctx.helper.pid)
    outside = os.open(ctx.ws.outside, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            ctx.helper.conn.send_request(_LSTAT)
            ctx.helper.send_raw(encode_request(_LSTAT), [outside, outside])
            ctx.expect(isinstance(ctx.helper.next_reply(), m.StatReply), "lstat failed")
    finally:
        os.close(outside)
    _in_sync(ctx)
    after = procfs.settled_fd_count(ctx.helper.pid)
    ctx.expect(after <= base, f"the helper holds {after - base} more fds")
    outside_id = procfs.object_id(ctx.ws.outside)
    kept = [fd for fd, obj in procfs.fd_objects(ctx.helper.pid).items() if obj[:2] == outside_id]
    ctx.expect(not kept, f"the helper kept a passed fd to outside as fd {kept}")


def _close_before_reply(ctx: Context, request: m.Request) -> None:
    """Send ``request`` and hang up while the helper is stopped, so that its reply is
    written to a socket whose peer is already gone (with nothing unread on our side:
    the kernel then answers the write with EPIPE, and SIGPIPE unless it is handled)."""
    _in_sync(ctx)
    pgid = os.getpgid(ctx.helper.pid)
    os.killpg(pgid, signal.SIGSTOP)
    try:
        procfs.wait_stopped(ctx.helper.pid, 2.0)
        ctx.helper.send_raw(encode_request(request))
        ctx.helper.abandon()
    finally:
        os.killpg(pgid, signal.SIGCONT)


@case("security", "framing", name="frame.close_before_reply", fatal=True)
def frame_close_before_reply(ctx: Context) -> None:
    """The client hangs up before a status reply: the helper exits, not killed by SIGPIPE."""
    _close_before_reply(ctx, _LSTAT)


@case("security", "framing", name="frame.close_before_fd_reply", fatal=True)
def frame_close_before_fd(ctx: Context) -> None:
    """The client hangs up before an FD reply: the helper exits, not killed by SIGPIPE."""
    _close_before_reply(ctx, m.OpenRequest(vpath("file.txt"), O_RD))


@case("security", "framing", name="frame.eof_between_requests", fatal=True)
def frame_eof(ctx: Context) -> None:
    """EOF between requests: the helper exits cleanly."""
    _in_sync(ctx)
    ctx.helper.shutdown_write()
    got, eof = ctx.helper.read_raw(3.0)
    ctx.expect(not got and eof, "the helper did not close after EOF")


# == resource exhaustion ===========================================================


def _baseline(ctx: Context) -> int:
    _in_sync(ctx)
    return procfs.settled_fd_count(ctx.helper.pid)


def _after(ctx: Context, base: int, what: str) -> None:
    _in_sync(ctx)
    after = procfs.settled_fd_count(ctx.helper.pid)
    ctx.expect(after <= base, f"{what}: the helper holds {after - base} more fds ({after})")
    ctx.notes.append(f"helper fds {base} -> {after}")


@case("security", "resource", name="resource.many_opens")
def resource_many_opens(ctx: Context) -> None:
    """500 T_OPENs (half of the fds kept by the client): the helper's fd count is unchanged."""
    base = _baseline(ctx)
    kept = []
    for i in range(500):
        fd = ctx.fd(m.OpenRequest(vpath("file.txt" if i % 2 else "dir"), O_RD))
        if i % 2:
            kept.append(fd)
        else:
            ctx.close(fd)
    _after(ctx, base, "500 opens")


@case("security", "resource", name="resource.error_paths")
def resource_error_paths(ctx: Context) -> None:
    """400 failing requests of every kind: no descriptor leaks on error paths."""
    base = _baseline(ctx)
    bad: list[m.Request] = [
        m.OpenRequest(vpath("missing"), O_RD),
        m.OpenRequest(vpath("sock"), O_RD),
        m.OpenRequest(vpath("fifo"), O_RD | os.O_NONBLOCK),
        m.OpenRequest(vpath("file.txt"), O_RD | os.O_DIRECTORY),
        m.CreateRequest(spath("file.txt"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, 0, 0),
        m.GetversionRequest(vpath("missing")),
        m.LgetxattrRequest(100, vpath("file.txt"), b"user.missing"),
        m.ReadlinkRequest(vpath("file.txt"), 4096),
        m.TruncateRequest(vpath("dir"), 0),
        m.ChmodRequest(vpath("escape_rel"), 0o600),
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
    big = m.LstatRequest(b"/" + b"m" * 65533)
    for _ in range(100):
        ctx.call(big)
        ctx.call(m.LgetxattrRequest(0x7FFFFFFF, vpath("file.txt"), b"user.comment"))
    after = procfs.rss_kib(ctx.helper.pid)
    ctx.expect(after - before < 64 * 1024, f"RSS grew from {before} to {after} KiB")
    ctx.notes.append(f"RSS {before} -> {after} KiB")


# == confinement self-check ==========================================================

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


@case("security", "confinement", name="confine.root_is_export")
def confine_root(ctx: Context) -> None:
    """Every thread's root directory is the export (chroot), not the host's /
    (the same object: ``(st_dev, st_ino)`` through /proc/<pid>/task/<tid>/root)."""
    export = procfs.object_id(ctx.ws.export)
    for t in _threads(ctx):
        ctx.expect(t.root_dev_ino == export, f"thread {t.tid}: root is {t.root}")


@case("security", "confinement", name="confine.inherited_fds_closed", fresh=True)
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
    """The named socket is owned -u:-g and has no permissions for others."""
    helper = ctx.helper
    st = helper.socket_stat
    ctx.expect(st is not None, "the socket file was not found after connect")
    assert st is not None
    ctx.expect(stat.S_ISSOCK(st.st_mode), "not a socket")
    ctx.expect(
        (st.st_uid, st.st_gid) == (helper.uid, helper.gid),
        f"owner {st.st_uid}:{st.st_gid}, not {helper.uid}:{helper.gid}",
    )
    ctx.expect(stat.S_IMODE(st.st_mode) & 0o007 == 0, f"mode {stat.filemode(st.st_mode)}")
