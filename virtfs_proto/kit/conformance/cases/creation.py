"""Security: what a request creates, and what it opens, while the export changes.

Two attack classes, each judged on the objects themselves (owners read back
with lstat or through the fd handed out, opens observed from a FIFO's other
end), never on the helper's answers alone:

* ``created-owner``: a file a request created ends with the requested owner,
  whatever path shape led there (plain, a symlinked directory, a dangling
  final symlink, O_TMPFILE) and while another process creates and removes
  the same name. A helper that decides "created" from a look at the name
  beforehand leaves some files with its own uid, and set-uid bits intact.
* ``special-race``: while another process swaps a name between a regular file
  and a FIFO, no request ever opens the FIFO. Refusing to *hand out* an fd is
  not enough: the open itself wakes a FIFO's writer (and on a device may
  rewind a tape or arm a watchdog).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .... import messages as m
from ..model import OTHER_OWNER, OTHER_USER, CheckFailed, Context, Name, case, errname, qemu, qpath
from .security._common import RACE_ITERATIONS
from .security.races import ForkedLoop, _Swapper

#: the owner every creating request asks for (neither root nor the helper's user)
UID: Final = 1234
GID: Final = 5678
#: what another host user racing the helper creates files as
RACER_UID: Final = 4242
#: a set-uid mode: the bit must survive only on a file that got the requested owner
SETUID_MODE: Final = 0o4755
#: how long a special-file race runs (a CI machine gets seconds, not iterations);
#: VIRTFS_PROTO_RACE_SECONDS / VIRTFS_PROTO_RACE_ITERATIONS raise it for a local soak
RACE_SECONDS: Final = float(os.environ.get("VIRTFS_PROTO_RACE_SECONDS", "2"))
SPECIAL_RACE_ITERATIONS: Final = int(os.environ.get("VIRTFS_PROTO_RACE_ITERATIONS", "20000"))

_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0o20200000)
_CREAT: Final = os.O_RDWR | os.O_CREAT


@dataclass(frozen=True)
class Creator:
    """One creating request: how to ask for ``path`` with an owner, and the owner and
    mode to expect (as root; rootless, :meth:`Context.owner` gives the owner)."""

    name: str
    make: Callable[[Name, tuple[int, int]], m.Request]
    uid: int
    gid: int
    #: the permission bits the created object must carry (None: not checked)
    mode: int | None
    #: whether O_CREAT semantics apply (a dangling final symlink is followed)
    follows_dangling: bool
    #: whether it takes O_TMPFILE
    tmpfile: Callable[[Name, tuple[int, int]], m.Request] | None = None

    @property
    def others(self) -> bool:
        """Whether the owner it expects is another than the helper's own."""
        return (self.uid, self.gid) != (0, 0)


CREATORS: Final = (
    Creator(
        "create",
        lambda p, o: qemu(m.CreateRequest, p, _CREAT, SETUID_MODE, *o),
        UID,
        GID,
        SETUID_MODE,
        True,
        lambda p, o: qemu(m.CreateRequest, p, os.O_RDWR | _O_TMPFILE, SETUID_MODE, *o),
    ),
    Creator(
        "create_excl",
        lambda p, o: qemu(m.CreateRequest, p, _CREAT | os.O_EXCL, SETUID_MODE, *o),
        UID,
        GID,
        SETUID_MODE,
        False,
    ),
    # QEMU's T_OPEN with O_CREAT creates a mode-0 file owned by root: the helper's own
    Creator(
        "open_creat",
        lambda p, _: qemu(m.OpenRequest, p, _CREAT),
        0,
        0,
        0,
        True,
        lambda p, _: qemu(m.OpenRequest, p, os.O_RDWR | _O_TMPFILE),
    ),
    Creator(
        "mknod_file",
        lambda p, o: qemu(m.MknodRequest, *o, p, stat.S_IFREG | SETUID_MODE, 0),
        UID,
        GID,
        SETUID_MODE,
        False,
    ),
    Creator(
        "mknod_fifo",
        lambda p, o: qemu(m.MknodRequest, *o, p, stat.S_IFIFO | 0o640, 0),
        UID,
        GID,
        0o640,
        False,
    ),
    Creator("mkdir", lambda p, o: qemu(m.MkdirRequest, *o, p, 0o750), UID, GID, 0o750, False),
    Creator(
        "symlink",
        lambda p, o: qemu(m.SymlinkRequest, *o, b"file.txt", p),
        UID,
        GID,
        None,
        False,
    ),
)


def _make(ctx: Context, creator: Creator, path: Name) -> m.Request:
    return creator.make(path, ctx.owner(creator.uid, creator.gid))


def _expect_owner(ctx: Context, st: os.stat_result, creator: Creator, what: str) -> None:
    want, got = ctx.owner(creator.uid, creator.gid), ctx.named_owner(st)
    ctx.expect(got == want, f"{what}: owned {got[0]}:{got[1]}, requested {want[0]}:{want[1]}")
    if creator.mode is not None:
        ctx.expect(
            stat.S_IMODE(st.st_mode) == creator.mode,
            f"{what}: mode {stat.S_IMODE(st.st_mode):o}, requested {creator.mode:o}",
        )


def _created(ctx: Context, creator: Creator, wire: Name, host: Path, what: str) -> None:
    """``creator`` on ``wire`` must succeed and leave ``host`` with the requested owner."""
    reply = ctx.ok(_make(ctx, creator, wire))
    if isinstance(reply, m.FdReply):
        ctx.expect(ctx.same_file(reply.fd, host), f"{what}: the fd is not the file at {host}")
    _expect_owner(ctx, os.lstat(host), creator, what)


def _plain(ctx: Context, c: Creator) -> None:
    _created(ctx, c, qpath("co_new"), ctx.host("co_new"), "plain path")


def _symlinked_dir(ctx: Context, c: Creator) -> None:
    os.mkdir(ctx.host("co_real"))
    os.symlink("co_real", ctx.host("co_linkdir"))
    _created(ctx, c, qpath("co_linkdir/x"), ctx.host("co_real/x"), "through a symlinked dir")


def _dangling(target: str) -> Callable[[Context, Creator], None]:
    def run(ctx: Context, c: Creator) -> None:
        os.symlink(target, ctx.host("co_dangling"))
        host = ctx.host(target.lstrip("/"))
        what = f"through a dangling symlink to {target}"
        if c.follows_dangling:
            _created(ctx, c, qpath("co_dangling"), host, what)
        else:  # the link itself exists: nothing is created, nothing changes owner
            ctx.err(_make(ctx, c, qpath("co_dangling")))
            ctx.expect(not os.path.lexists(host), f"{what}: {host.name} was created")

    return run


def _tmpfile(ctx: Context, c: Creator) -> None:
    assert c.tmpfile is not None
    reply = ctx.call(c.tmpfile(qpath("emptydir"), ctx.owner(c.uid, c.gid)))
    if isinstance(reply, m.ErrorReply):
        ctx.notes.append(f"O_TMPFILE refused with {errname(reply.errno)}")
        return
    assert isinstance(reply, m.FdReply)
    _expect_owner(ctx, os.fstat(reply.fd), c, "O_TMPFILE")


#: path shape -> (what it is, the check, whether it creates with a dangling final
#: symlink: then a creator that does not follow one creates nothing, owner incidental)
SHAPES: Final[dict[str, tuple[str, Callable[[Context, Creator], None], bool]]] = {
    "plain": ("a plain new name", _plain, False),
    "symlinked_dir": (
        "a new name in a directory reached through a symlink",
        _symlinked_dir,
        False,
    ),
    "dangling_rel": ("a dangling final symlink (relative)", _dangling("co_target"), True),
    "dangling_abs": ("a dangling final symlink (absolute)", _dangling("/co_target_abs"), True),
    "tmpfile": ("O_TMPFILE in a directory", _tmpfile, False),
}


def _owner_case(creator: Creator, shape: str) -> None:
    what, check, dangling = SHAPES[shape]
    # rootless, a case runs where the owner it checks is the helper's own (what
    # T_OPEN creates) or where nothing is created (a dangling link not followed)
    checks_other = creator.others and not (dangling and not creator.follows_dangling)

    def run(ctx: Context) -> None:
        check(ctx, creator)

    run.__doc__ = (
        f"{creator.make(Name(b''), (UID, GID)).TYPE.name} ({creator.name}) through {what}: "
        "what it creates gets the requested owner and mode"
    )
    needs = (OTHER_OWNER,) if checks_other else ()
    case("security", "created-owner", name=f"owner.{creator.name}.{shape}", needs=needs)(run)


for _creator in CREATORS:
    for _shape in SHAPES:
        if _shape != "tmpfile" or _creator.tmpfile is not None:
            _owner_case(_creator, _shape)


def _racer(path: Path, make_dir: bool) -> ForkedLoop:
    """A child process, running as another user, that creates and removes ``path``
    in a loop: the other host user who races the helper for the same name."""

    def become_racer() -> None:  # pragma: no cover - runs forked
        os.setgroups([])
        os.setresgid(RACER_UID, RACER_UID, RACER_UID)
        os.setresuid(RACER_UID, RACER_UID, RACER_UID)

    def create_and_remove() -> None:  # pragma: no cover - runs forked
        with contextlib.suppress(OSError):
            if make_dir:
                os.mkdir(path, 0o755)
                os.rmdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
                os.unlink(path)

    return ForkedLoop(create_and_remove, become_racer)


def _race_case(creator: Creator) -> None:
    def run(ctx: Context) -> None:
        race_dir = ctx.host("race_dir")
        race_dir.mkdir(mode=0o777)
        os.chmod(race_dir, 0o777)
        target = race_dir / "new"
        mine = theirs = refused = 0
        with _racer(target, make_dir=creator.name == "mkdir"):
            for _ in range(RACE_ITERATIONS):
                reply = ctx.call(_make(ctx, creator, qpath("race_dir/new")))
                try:
                    st = os.fstat(reply.fd) if isinstance(reply, m.FdReply) else os.lstat(target)
                except FileNotFoundError:
                    st = None  # the racer removed it already
                if isinstance(reply, m.ErrorReply):
                    refused += 1
                elif st is not None:
                    if st.st_uid == RACER_UID:
                        theirs += 1
                    else:
                        mine += 1
                        _expect_owner(ctx, st, creator, "created during the race")
                if isinstance(reply, m.FdReply):
                    ctx.close(reply.fd)
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.lstat(target).st_mode):
                        os.rmdir(target)
                    else:
                        os.unlink(target)
        ctx.notes.append(
            f"{RACE_ITERATIONS} requests: {mine} created by the helper, {theirs} found "
            f"the racer's object instead, {refused} refused"
        )

    run.__doc__ = (
        f"{creator.name} while another user creates and removes the same name: every object "
        "the helper created has the requested owner, none keeps the helper's own"
    )
    name = f"owner.{creator.name}.racing_creator"
    needs = (OTHER_OWNER, OTHER_USER) if creator.others else (OTHER_USER,)
    case("security", "created-owner", name=name, needs=needs)(run)


for _creator in CREATORS:
    _race_case(_creator)


# == special files under a race =================================================


class _FifoWatch:
    """Counts opens of a FIFO from its other end.

    A thread blocks in open() of the FIFO for the end the helper must never
    open (a writer watches for readers, a reader for writers); each time
    anyone opens the other end, the kernel wakes it and it counts one. It is
    opened through a hard link outside the swapped names, so it always
    watches the same inode.
    """

    def __init__(self, path: Path, watch_flags: int) -> None:
        self.path = path
        self.watch_flags = watch_flags
        self.opens = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while True:
            fd = os.open(self.path, self.watch_flags)
            os.close(fd)
            if self._stopping:
                return
            self.opens += 1

    def __enter__(self) -> _FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        # open the other end ourselves, so the watcher wakes and sees the flag
        other = os.O_WRONLY if self.watch_flags == os.O_RDONLY else os.O_RDONLY
        deadline = time.monotonic() + 5
        while self._thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, other | os.O_NONBLOCK))
            self._thread.join(0.05)


@contextlib.contextmanager
def _regular_fifo_swap(ctx: Context) -> Iterator[Path]:
    """``race`` swapping between a regular file and a FIFO; yields the FIFO's watch path."""
    regular, fifo = ctx.host("race"), ctx.host("race_other")
    regular.write_bytes(b"regular\n")
    os.mkfifo(fifo, 0o666)
    watch = ctx.ws.rundir / "fifo_watch"
    os.link(fifo, watch)
    try:
        with _Swapper(regular, fifo) as swapper:
            yield watch
        ctx.notes.append(f"{swapper.swaps} swaps")
    finally:
        os.unlink(watch)


def _special_race_case(
    name: str, doc: str, make: Callable[[Context], m.Request], watch_flags: int
) -> None:
    def run(ctx: Context) -> None:
        request = make(ctx)
        sent = 0
        with _regular_fifo_swap(ctx) as watch, _FifoWatch(watch, watch_flags) as watcher:
            deadline = time.monotonic() + RACE_SECONDS
            while sent < SPECIAL_RACE_ITERATIONS and time.monotonic() < deadline:
                reply = ctx.call(request)
                sent += 1
                if isinstance(reply, m.FdReply):
                    st = os.fstat(reply.fd)
                    ctx.close(reply.fd)
                    if not stat.S_ISREG(st.st_mode):
                        kind = stat.filemode(st.st_mode)
                        raise CheckFailed(f"request {sent} handed out a {kind}")
                if watcher.opens:
                    break
        ctx.notes.insert(0, f"{sent} requests in the race")
        if watcher.opens:
            raise CheckFailed(
                f"the helper opened the FIFO within {sent} requests ({watcher.opens} "
                "wake-ups of its other end)"
            )

    run.__doc__ = doc
    case("security", "special-race", name=f"special_race.{name}", fresh=True)(run)


_special_race_case(
    "open_rdonly",
    "T_OPEN O_RDONLY of a name swapped between a regular file and a FIFO never opens the FIFO",
    lambda ctx: qemu(m.OpenRequest, qpath("race"), os.O_RDONLY),
    os.O_WRONLY,
)
_special_race_case(
    "open_wronly",
    "T_OPEN O_WRONLY of a name swapped between a regular file and a FIFO never opens the FIFO",
    lambda ctx: qemu(m.OpenRequest, qpath("race"), os.O_WRONLY),
    os.O_RDONLY,
)
_special_race_case(
    "create_no_excl",
    "T_CREATE O_RDONLY|O_CREAT of a swapped name (it exists) never opens the FIFO",
    lambda ctx: qemu(m.CreateRequest, qpath("race"), os.O_RDONLY | os.O_CREAT, 0o644, *ctx.ids),
    os.O_WRONLY,
)
_special_race_case(
    "truncate",
    "T_TRUNCATE of a name swapped between a regular file and a FIFO never opens the FIFO",
    lambda ctx: qemu(m.TruncateRequest, qpath("race"), 0),
    os.O_RDONLY,
)
_special_race_case(
    "getversion",
    "T_GETVERSION of a name swapped between a regular file and a FIFO never opens the FIFO",
    lambda ctx: qemu(m.GetversionRequest, qpath("race")),
    os.O_WRONLY,
)
