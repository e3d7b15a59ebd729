"""Cases, verdicts, the context a case runs in, and the report."""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ... import messages as m
from ...errnos import errno_name

# the cases build their requests through these (see paths.py)
from .paths import Name as Name
from .paths import qemu as qemu
from .paths import qpath as qpath
from .paths import wrong_nul as wrong_nul
from .session import DEFAULT_TIMEOUT, HelperSession
from .workspace import Workspace

GROUPS: Final = ("wire", "behaviour", "security")


class Verdict(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    #: a behaviour the spec lets a peer tolerate (counted as "tolerated")
    DEVIATION = "known-deviation"
    #: the case cannot judge this helper or host (its detail says why)
    NOT_APPLICABLE = "not-applicable"


class CheckFailed(Exception):
    """The helper's answer or its effect is not what the spec says."""


class Deviation(Exception):
    """The helper showed a behaviour the spec lets a peer tolerate (a QEMU quirk)."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


class NotApplicable(Exception):
    """The case cannot judge this helper here (e.g. the host lacks what it needs)."""


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a case needs that a run without root lacks (``@case(..., needs=...)``).

    The runner never runs such a case in rootless mode (see
    :func:`rootless_runner`): it reports it not applicable with ``reason``,
    decided by this declaration and never by how the case would fail.
    """

    name: str
    #: completes "not applicable in rootless mode, because ..."
    reason: str


#: Requests naming ids other than the invoker's that the case cannot change: the
#: wire vectors, recorded from QEMU with root's ids (cases whose owner is incidental
#: name :attr:`Context.ids` instead, see :meth:`Context.owner`).
ROOT_IDS: Final = Requirement(
    "root-ids",
    "it replays requests recorded from QEMU that name root's or another user's ids (or "
    "make QEMU's root-owned T_OPEN O_CREAT file), and a rootless helper maps only its "
    "user's ids",
)
#: The case checks that an object gets an owner other than the helper's own.
OTHER_OWNER: Final = Requirement(
    "other-owner",
    "it checks that what a request creates or chowns gets an owner other than the "
    "helper's own, and a rootless helper maps only its user's ids (every owner it can "
    "give is its own)",
)
#: A process of another host user acts beside the helper.
OTHER_USER: Final = Requirement(
    "other-user",
    "it runs a process as another host user beside the helper (racing it for a name, "
    "or writing through an fd it passed), and a non-root runner cannot switch users",
)
#: The helper is started with -u/-g naming a socket owner other than the invoker.
OTHER_SOCKET_OWNER: Final = Requirement(
    "socket-owner",
    "it starts the helper with a socket owner (-u/-g) other than the invoker, so that "
    "a chown through a swapped socket path shows; only root can chown to another owner",
)
#: A character device node in the export.
DEVICE_NODES: Final = Requirement(
    "device-nodes",
    "it needs a device node (mknod of one needs CAP_MKNOD in the initial user namespace)",
)
#: A tmpfs or procfs mounted inside the export by the runner.
MOUNTS: Final = Requirement(
    "mounts",
    "it mounts a file system inside the export (needs CAP_SYS_ADMIN in the initial user namespace)",
)
#: Set-uid/set-gid bits that a request sets and the case reads back.
SETID_BITS: Final = Requirement(
    "setid-bits",
    "it needs set-id bits kept, which a rootless helper clears by default (its user "
    "cannot mount the export nosuid; only --allow-setid keeps them)",
)
#: The export holds a trusted.* attribute (only CAP_SYS_ADMIN sets one).
TRUSTED_XATTRS: Final = Requirement(
    "trusted-xattrs",
    "it needs a trusted.* attribute in the export (only CAP_SYS_ADMIN can set one)",
)

#: The serving process's /proc/<pid>/fd or root, read by the runner.
HELPER_PROC: Final = Requirement(
    "helper-proc",
    "it reads the helper's /proc/<pid>/fd or root, which only root may read of a "
    "non-dumpable process (a rootless helper is one: its user may not ptrace it)",
)

#: Every requirement, by name.
REQUIREMENTS: Final = {
    r.name: r
    for r in (
        ROOT_IDS,
        OTHER_OWNER,
        OTHER_USER,
        OTHER_SOCKET_OWNER,
        DEVICE_NODES,
        MOUNTS,
        SETID_BITS,
        TRUSTED_XATTRS,
        HELPER_PROC,
    )
}


def rootless_runner() -> bool:
    """Whether the suite runs in rootless mode: it does whenever it is not root.

    Then the workspace is the invoker's (no chown, no device node, no mount) and
    so is the helper it starts, and cases that need root are not applicable.
    """
    return os.geteuid() != 0


def not_applicable_reason(needs: Iterable[Requirement]) -> str:
    """The N/A detail of a case with these requirements, in rootless mode."""
    return "not applicable in rootless mode, because " + "; and ".join(r.reason for r in needs)


@dataclass(frozen=True, slots=True)
class Case:
    """One check. ``fatal``: the case ends the connection on purpose, and the helper
    must then exit with status 0 without replying. ``fresh``: the case runs on a
    helper of its own (it may change the helper's state)."""

    name: str
    group: str
    cls: str
    doc: str
    func: Callable[[Context], None]
    fatal: bool = False
    fresh: bool = False
    modes: tuple[str, ...] = ("fd", "socket")
    #: what it needs that a rootless run lacks (:class:`Requirement`)
    needs: tuple[Requirement, ...] = ()


#: Every registered case, in definition order.
CASES: list[Case] = []


def case(
    group: str,
    cls: str,
    *,
    fatal: bool = False,
    fresh: bool = False,
    modes: tuple[str, ...] = ("fd", "socket"),
    name: str | None = None,
    needs: Requirement | tuple[Requirement, ...] = (),
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register a case function; its docstring is the case's description."""
    assert group in GROUPS

    def register(func: Callable[[Context], None]) -> Callable[[Context], None]:
        full = f"{group}.{name or func.__name__}"
        assert all(c.name != full for c in CASES), full
        doc = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        wants = (needs,) if isinstance(needs, Requirement) else needs
        CASES.append(Case(full, group, cls, doc, func, fatal, fresh or fatal, modes, wants))
        return func

    return register


def errname(errno: int) -> str:
    return errno_name(errno)


def show(reply: m.Reply) -> str:
    if isinstance(reply, m.ErrorReply):
        return f"error {errname(reply.errno)}"
    if isinstance(reply, m.FdReply):
        return "an fd"
    text = repr(reply)
    return text if len(text) < 120 else text[:117] + "..."


class Context:
    """What a case works with: the workspace, the helper, and checking shortcuts."""

    def __init__(
        self,
        ws: Workspace,
        start_helper: Callable[[], HelperSession],
        mode: str,
        argv: Sequence[str] = (),
        *,
        rootless: bool = False,
        ids: tuple[int, int] = (0, 0),
    ) -> None:
        self.ws = ws
        #: the suite runs without root (:func:`rootless_runner`)
        self.rootless = rootless
        #: uid and gid a request names when the owner is not what the case checks:
        #: root's, or in a rootless run the invoker as the helper names it (what it
        #: answers for the export's root), an id any rootless helper maps
        self.ids = ids
        #: the helper command under test (without options)
        self.argv = list(argv)
        self._start_helper = start_helper
        self._helper: HelperSession | None = None
        self.mode = mode
        self._fds: list[int] = []
        #: notes a case leaves for the report (shown beside the verdict)
        self.notes: list[str] = []

    @property
    def helper(self) -> HelperSession:
        """The helper under test, started on first use."""
        if self._helper is None:
            self._helper = self._start_helper()
        return self._helper

    @property
    def used_helper(self) -> HelperSession | None:
        """The helper the case talked to, if any."""
        return self._helper

    # -- paths --------------------------------------------------------------

    def host(self, name: str = "") -> Path:
        """The host path of ``name`` inside the export."""
        return self.ws.export / name if name else self.ws.export

    # -- requests -------------------------------------------------------------

    def call(self, request: m.Request, timeout: float = DEFAULT_TIMEOUT) -> m.Reply:
        reply = self.helper.call(request, timeout)
        if isinstance(reply, m.FdReply):
            self._fds.append(reply.fd)
        return reply

    def ok(self, request: m.Request, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The reply, which must be a success."""
        reply = self.call(request, timeout)
        if isinstance(reply, m.ErrorReply):
            raise CheckFailed(f"{request.TYPE.name} failed with {errname(reply.errno)}")
        return reply

    def fd(self, request: m.OpenRequest | m.CreateRequest, timeout: float = DEFAULT_TIMEOUT) -> int:
        reply = self.ok(request, timeout)
        assert isinstance(reply, m.FdReply)
        return reply.fd

    def err(self, request: m.Request, *errnos: int, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The errno of the reply, which must be an error with one of ``errnos``
        (any errno when none are given)."""
        reply = self.call(request, timeout)
        if not isinstance(reply, m.ErrorReply):
            raise CheckFailed(
                f"{request.TYPE.name} succeeded ({show(reply)}); expected "
                + (" or ".join(errname(e) for e in errnos) if errnos else "an error")
            )
        if errnos and reply.errno not in errnos:
            raise CheckFailed(
                f"{request.TYPE.name} failed with {errname(reply.errno)}; expected "
                + " or ".join(errname(e) for e in errnos)
            )
        return reply.errno

    def adopt(self, fd: int) -> int:
        """Close ``fd`` when the case ends."""
        self._fds.append(fd)
        return fd

    def close(self, fd: int) -> None:
        """Close a received fd now rather than when the case ends."""
        self._fds.remove(fd)
        os.close(fd)

    def close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    # -- checks -------------------------------------------------------------

    @staticmethod
    def expect(condition: bool, message: str) -> None:
        if not condition:
            raise CheckFailed(message)

    def expect_inside(self, fd: int, what: str) -> os.stat_result:
        """``fd`` must be an object of the export (not a sentinel), regular or a directory."""
        st = os.fstat(fd)
        for p in (self.ws.secret, self.ws.secret_dir, self.ws.outside, self.ws.root):
            o = os.lstat(p)
            if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
                raise CheckFailed(f"{what}: the fd passed back is {p} (outside the export)")
        self.expect(
            stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode),
            f"{what}: the fd passed back is not a regular file or directory",
        )
        return st

    def owner(self, uid: int, gid: int) -> tuple[int, int]:
        """The owner a request names where it is incidental to what the case checks:
        ``uid:gid`` as root (what the case always sent), :attr:`ids` in a rootless run
        (the only ids its helper maps). Compare a host object's owner with it through
        :meth:`named_owner`."""
        return self.ids if self.rootless else (uid, gid)

    def named_owner(self, st: os.stat_result) -> tuple[int, int]:
        """The owner of a host object as the helper must name it: the host's ids,
        but the invoker's objects in a rootless run as :attr:`ids` (a user
        namespace's view of them, e.g. 0 under --subids)."""
        if self.rootless and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()):
            return self.ids
        return st.st_uid, st.st_gid

    @staticmethod
    def same_file(fd: int, path: Path) -> bool:
        a, b = os.fstat(fd), os.lstat(path)
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclass(slots=True)
class CaseResult:
    name: str
    group: str
    cls: str
    mode: str
    verdict: Verdict
    detail: str = ""
    deviation: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "class": self.cls,
            "mode": self.mode,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "deviation": self.deviation,
            "seconds": round(self.seconds, 3),
        }


@dataclass(slots=True)
class Report:
    helper: list[str]
    modes: list[str]
    results: list[CaseResult] = field(default_factory=list)

    def count(self, verdict: Verdict) -> int:
        return sum(r.verdict is verdict for r in self.results)

    @property
    def passed(self) -> int:
        return self.count(Verdict.PASS)

    @property
    def failed(self) -> int:
        return self.count(Verdict.FAIL)

    @property
    def deviations(self) -> int:
        return self.count(Verdict.DEVIATION)

    @property
    def not_applicable(self) -> int:
        return self.count(Verdict.NOT_APPLICABLE)

    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if r.verdict is Verdict.FAIL]

    def failed_names(self, mode: str | None = None) -> set[str]:
        return {r.name for r in self.failures() if mode is None or r.mode == mode}

    def summary(self) -> str:
        """The report's last line; it begins "N passed, N failed", which CI tooling reads."""
        return count_line(self.results)

    def as_json(self) -> dict[str, Any]:
        return {
            "helper": self.helper,
            "modes": self.modes,
            "passed": self.passed,
            "failed": self.failed,
            "known_deviations": self.deviations,
            "not_applicable": self.not_applicable,
            "results": [r.as_json() for r in self.results],
        }


def count_line(results: Iterable[CaseResult]) -> str:
    """``N passed, N failed, N tolerated, N not applicable``: every result counted once."""
    counts = dict.fromkeys(Verdict, 0)
    for r in results:
        counts[r.verdict] += 1
    return (
        f"{counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed, "
        f"{counts[Verdict.DEVIATION]} tolerated, {counts[Verdict.NOT_APPLICABLE]} not applicable"
    )


def matches(c: Case, pattern: str) -> bool:
    """Whether the case's name or class matches ``pattern`` (a glob or a substring)."""
    return (
        fnmatch.fnmatchcase(c.name, pattern)
        or pattern in c.name
        or fnmatch.fnmatchcase(c.cls, pattern)
    )


def select(
    cases: Iterable[Case], only: str | Sequence[str] | None, exclude: Sequence[str] = ()
) -> list[Case]:
    """Cases matching any of the ``only`` patterns (all cases when none), minus those
    matching any ``exclude`` pattern (see :func:`matches`)."""
    wanted = [only] if isinstance(only, str) else list(only or ())
    return [
        c
        for c in cases
        if (not wanted or any(matches(c, p) for p in wanted))
        and not any(matches(c, p) for p in exclude)
    ]
