"""Rootless mode: the user namespace a helper started without root confines itself in.

An unprivileged user cannot chroot, mount or hold capabilities; inside a
user namespace of its own it can, over that namespace only. The helper's
*parent* (the process the launcher started) calls
:func:`enter_user_namespace` once the client's socket is in hand: it
unshares a user namespace and has it mapped, and only then unshares the
pid namespace (so that the user namespace owns it and a procfs of it can
be mounted) and forks the serving process, which builds the same sandbox
as a root helper does (:mod:`.sandbox`).

Id maps, as ``/proc/<pid>/uid_map`` lines ``INSIDE OUTSIDE COUNT``:

* by default (identity) only the invoking uid and gid, each to itself
  (``U U 1``; ``setgroups`` denied first, as the kernel requires for an
  unprivileged gid map). The process writes its own maps: no set-uid
  program is involved;
* ``--uid-map``/``--gid-map INSIDE:OUTSIDE:COUNT`` (repeatable) and
  ``--subids`` (inside 0 -> the invoking uid/gid, inside 1.. -> the user's
  ranges in ``/etc/subuid``/``/etc/subgid``, one after the other, as podman
  does) are written by ``newuidmap``/``newgidmap`` (Debian's ``uidmap``),
  found only in :data:`MAPPER_PATH` (never the caller's PATH) and run with
  a fixed environment. Those are set-uid root and must run in the initial
  user namespace without NO_NEW_PRIVS (a helper started under it says so
  and stops): a *mapper* child is forked before anything confines, and
  runs them on the parent's pid once the parent has unshared.

A map is written once and never changes: :class:`IdMap` read back from
``/proc/self/uid_map`` at start-up tells for good which ids a request may
name (the others are answered EPERM, :mod:`.ops`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal

from .._record import Record
from . import oslib

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

SUBUID_FILE: Final = "/etc/subuid"
SUBGID_FILE: Final = "/etc/subgid"

#: The set-uid programs that write a map of more than the caller's own id.
NEWUIDMAP: Final = "newuidmap"
NEWGIDMAP: Final = "newgidmap"
#: Where they are looked for, and the whole environment they run with: the
#: caller's PATH could name a program of anyone's choosing.
MAPPER_PATH: Final = "/usr/bin:/bin:/usr/sbin:/sbin"
_MAPPER_ENV: Final = {"PATH": MAPPER_PATH, "LC_ALL": "C"}
#: uid_t/gid_t -1 ("no id"): the kernel never maps it
_NO_ID: Final = 0xFFFFFFFF
_PR_GET_NO_NEW_PRIVS: Final = 39
_PR_SET_PDEATHSIG: Final = 1

#: The kernel's knobs that forbid unprivileged user namespaces, and what to say.
_USERNS_KNOBS: Final = (
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0"),
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0"),
    (
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
        "1",
        "kernel.apparmor_restrict_unprivileged_userns=1 (AppArmor)",
    ),
)


class UserNamespaceError(Exception):
    """The user namespace cannot be made or mapped: a rootless helper refuses to start."""


class IdRange(Record):
    """One map line: ``count`` ids from ``inside`` are ``outside`` onwards on the host."""

    __slots__ = ("count", "inside", "outside")
    inside: int
    outside: int
    count: int

    def __init__(self, inside: int, outside: int, count: int) -> None:
        self._set(inside=inside, outside=outside, count=count)

    def __str__(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"

    @classmethod
    def parse_option(cls, value: str, option: str) -> IdRange:
        """``INSIDE:OUTSIDE:COUNT`` as ``--uid-map``/``--gid-map`` take it."""
        try:
            parts = value.split(":")
            if not all(part.isascii() and part.isdigit() for part in parts):
                raise ValueError  # int() takes other scripts' digits, '_' and blanks
            inside, outside, count = (int(part, 10) for part in parts)
        except ValueError:
            raise ValueError(f"{option} takes INSIDE:OUTSIDE:COUNT, not {value!r}") from None
        # 4294967295 is (uid_t)-1, which no map may contain
        if min(inside, outside) < 0 or count < 1 or max(inside, outside) + count > _NO_ID:
            raise ValueError(f"{option} {value!r}: ids out of range")
        return cls(inside, outside, count)


class IdMap(Record):
    """A user namespace's uid or gid map."""

    __slots__ = ("ranges",)
    ranges: tuple[IdRange, ...]

    def __init__(self, ranges: tuple[IdRange, ...]) -> None:
        self._set(ranges=ranges)

    @classmethod
    def parse(cls, text: str) -> IdMap:
        """The map as ``/proc/<pid>/uid_map`` shows it."""
        return cls(tuple(IdRange(*map(int, line.split())) for line in text.splitlines() if line))

    def maps_inside(self, inside: int) -> bool:
        """Whether ``inside`` (an id as seen in the namespace) has a host id."""
        return any(r.inside <= inside < r.inside + r.count for r in self.ranges)

    def to_outside(self, inside: int) -> int | None:
        for r in self.ranges:
            if r.inside <= inside < r.inside + r.count:
                return r.outside + inside - r.inside
        return None

    def to_inside(self, outside: int) -> int | None:
        for r in self.ranges:
            if r.outside <= outside < r.outside + r.count:
                return r.inside + outside - r.outside
        return None

    def __str__(self) -> str:
        return ", ".join(f'"{r}"' for r in self.ranges) or "(empty)"


class IdMaps(Record):
    """The uid and gid maps a rootless helper asks for (None: identity, written by itself)."""

    __slots__ = ("gid", "uid")
    uid: IdMap | None
    gid: IdMap | None

    def __init__(self, uid: IdMap | None = None, gid: IdMap | None = None) -> None:
        self._set(uid=uid, gid=gid)

    @property
    def identity(self) -> bool:
        return self.uid is None and self.gid is None


def identity_map(id_: int) -> IdMap:
    return IdMap((IdRange(id_, id_, 1),))


def subid_ranges(path: str, user: str, uid: int) -> tuple[IdRange, ...]:
    """Every ``user:start:count`` (or ``uid:start:count``) line of ``path``, in
    file order, as ranges placed one after the other from inside 1 (empty if
    none or no file). A line of the user's that is not three numbers (start
    and count non-negative decimal, count > 0, ending before 4294967295) is
    an error naming it; other users' lines are not ours to judge."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return ()
    ranges: list[IdRange] = []
    inside = 1
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split(":")
        if fields[0] not in (user, str(uid)):
            continue
        numbers = fields[1:]
        if len(numbers) != 2 or not all(n.isascii() and n.isdecimal() for n in numbers):
            raise UserNamespaceError(f"{path}:{number}: {text!r} is not NAME:START:COUNT")
        start, count = int(numbers[0]), int(numbers[1])
        if count < 1 or start + count > _NO_ID or inside + count > _NO_ID:
            raise UserNamespaceError(f"{path}:{number}: {text!r}: ids out of range")
        ranges.append(IdRange(inside, start, count))
        inside += count
    return tuple(ranges)


def subids_maps(uid: int, gid: int) -> IdMaps:
    """``--subids``: inside 0 is the invoking uid (gid), inside 1.. the user's
    sub-id ranges one after the other, as podman maps a rootless container."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    maps = []
    for path, own in ((SUBUID_FILE, uid), (SUBGID_FILE, gid)):
        sub = subid_ranges(path, user, uid)
        if not sub:
            raise UserNamespaceError(f"--subids: {path} grants {user} no range")
        maps.append(IdMap((IdRange(0, own, 1), *sub)))
    return IdMaps(uid=maps[0], gid=maps[1])


def explicit_maps(uid_ranges: Iterable[IdRange], gid_ranges: Iterable[IdRange]) -> IdMaps:
    """``--uid-map``/``--gid-map``; a kind not given maps the invoking id to itself.

    The invoking uid and gid must be mapped: they are the helper's own ids
    (an unmapped one would make every file the helper creates fail).
    """
    uid, gid = os.getuid(), os.getgid()
    uid_map = IdMap(tuple(uid_ranges)) if uid_ranges else identity_map(uid)
    gid_map = IdMap(tuple(gid_ranges)) if gid_ranges else identity_map(gid)
    for kind, own, ids in (("uid", uid, uid_map), ("gid", gid, gid_map)):
        if ids.to_inside(own) is None:
            raise UserNamespaceError(
                f"--{kind}-map must map your own {kind} {own} (e.g. 0:{own}:1):"
                " it is the helper's own"
            )
    return IdMaps(uid=uid_map, gid=gid_map)


def userns_refused_reason(exc: OSError) -> str:
    """One line that says why unshare(CLONE_NEWUSER) failed, naming the knob if one is set."""
    for path, value, knob in _USERNS_KNOBS:
        with contextlib.suppress(OSError), open(path) as f:
            if f.read().strip() == value:
                return f"unprivileged user namespaces are disabled ({knob})"
    if os.path.exists("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"):
        hint = " (kernel.unprivileged_userns_clone / apparmor)"
    else:
        hint = " (kernel.unprivileged_userns_clone / user.max_user_namespaces / a seccomp policy)"
    return f"cannot make a user namespace: {exc.strerror}{hint}"


def enter_user_namespace(maps: IdMaps) -> None:
    """Unshare a user namespace and map it as ``maps`` asks.

    The calling process must be single-threaded and unconfined; afterwards
    it holds every capability, over the new namespace only.
    """
    uid, gid = os.getuid(), os.getgid()
    if maps.identity:
        _unshare_user()
        # the process may map its own ids itself; gid_map needs setgroups denied first
        _write_own("setgroups", "deny")
        _write_own("uid_map", f"{uid} {uid} 1\n")
        _write_own("gid_map", f"{gid} {gid} 1\n")
        return
    assert maps.uid is not None and maps.gid is not None
    if oslib.prctl(_PR_GET_NO_NEW_PRIVS) == 1:
        # the set-uid bit of newuidmap would be ignored and it would fail obscurely
        raise UserNamespaceError(
            "id maps other than your own ids need newuidmap/newgidmap, which are set-uid"
            " and cannot work under NO_NEW_PRIVS, and whoever started the helper set it:"
            " start it without no_new_privs, or without --subids/--uid-map/--gid-map"
        )
    commands = [
        [_program(NEWUIDMAP), str(os.getpid()), *_args(maps.uid)],
        [_program(NEWGIDMAP), str(os.getpid()), *_args(maps.gid)],
    ]
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    mapper = os.fork()
    if mapper == 0:  # pragma: no cover - the mapper child, reported through the pipe
        os.close(go_w)
        os.close(result_r)
        os._exit(_run_mapper(go_r, result_w, commands))
    os.close(go_r)
    os.close(result_w)
    try:
        try:
            _unshare_user()
        finally:
            os.close(go_w)  # EOF: the mapper goes on if the unshare worked, else it exits
        with os.fdopen(result_r, "rb") as result:
            result_r = -1
            why = result.read().decode(errors="replace").strip()
    finally:
        if result_r >= 0:
            os.close(result_r)
        _, status = os.waitpid(mapper, 0)
    if why or os.waitstatus_to_exitcode(status) != 0:
        raise UserNamespaceError(why or f"the id mapper {describe_status(status)}")


def describe_status(status: int) -> str:
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _run_mapper(go: int, result: int, commands: list[list[str]]) -> int:
    """In the mapper child (still in the initial user namespace, unconfined):
    wait for the parent's unshare, then map its namespace."""
    import subprocess  # only with newuidmap maps: not on the usual start-up path

    parent = int(commands[0][1])
    # dies with the parent; a parent that is gone already (its pid possibly
    # someone else's now) is never mapped
    oslib.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return 1
    os.read(go, 1)  # EOF when the parent has unshared (or failed to)
    if os.getppid() != parent:
        return 1
    with contextlib.suppress(OSError):
        if os.readlink(f"/proc/{commands[0][1]}/ns/user") == os.readlink("/proc/self/ns/user"):
            return 1  # the parent did not unshare: it says why itself
    for command in commands:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=30, env=_MAPPER_ENV
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.write(result, f"{command[0]}: {exc}".encode())
            return 1
        if done.returncode != 0:
            detail = " ".join(done.stderr.split()) or f"status {done.returncode}"
            os.write(result, f"{' '.join(command)}: {detail}".encode())
            return 1
    return 0


def _program(name: str) -> str:
    import shutil  # only with newuidmap maps: not on the usual start-up path

    path = shutil.which(name, path=MAPPER_PATH)
    if path is None:
        raise UserNamespaceError(
            f"{name} not found in {MAPPER_PATH}: id maps other than your own ids need it"
            " (apt-get install uidmap)"
        )
    return path


def _args(ids: IdMap) -> list[str]:
    return [str(n) for r in ids.ranges for n in (r.inside, r.outside, r.count)]


def _unshare_user() -> None:
    try:
        oslib.unshare(oslib.CLONE_NEWUSER)
    except OSError as exc:
        raise UserNamespaceError(userns_refused_reason(exc)) from None


def _write_own(name: str, text: str) -> None:
    fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    except OSError as exc:
        raise UserNamespaceError(f"cannot write /proc/self/{name}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_maps(proc_fd: int | None = None, pid: str = "self") -> tuple[IdMap, IdMap]:
    """The uid and gid maps of ``pid``'s user namespace, as /proc shows them
    (through ``proc_fd``, a procfs root, if given)."""
    base = f"{pid}/" if proc_fd is not None else f"/proc/{pid}/"
    found = []
    for name in ("uid_map", "gid_map"):
        fd = os.open(base + name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        try:
            found.append(IdMap.parse(os.read(fd, 1 << 16).decode()))
        finally:
            os.close(fd)
    return found[0], found[1]
