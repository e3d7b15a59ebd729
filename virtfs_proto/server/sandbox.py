"""The sandbox layer: the process model and the namespaces (spec: the process model).

The helper the launcher started (the *parent*) forks the *serving process*
once every option is checked and the client's socket is in hand. With
``--sandbox=namespace`` (the default) the serving process is pid 1 of a new
pid namespace and, still root, enters new mount, net, ipc and uts
namespaces, then :func:`enter_namespaces` gives it a root of its own: an
empty tmpfs holding a private bind mount of the export, ``nodev,nosuid``,
pivoted into and chrooted into. Only then does it drop its privileges
(:mod:`.privileges`). A rootless helper does the same with every
capability over a user namespace the parent made first (:mod:`.userns`),
which therefore owns the pid namespace and all the others.

The parent keeps nothing but the child's pid: it waits, forwards SIGTERM
and SIGINT, and exits with the child's status (:func:`wait_for_child`).
The child dies with the parent (PR_SET_PDEATHSIG), so killing the process
the launcher knows ends the helper.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Mapping
from types import FrameType

from .. import phase
from .._record import Record
from . import oslib, privileges

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

SANDBOXES: Final = ("namespace", "chroot", "none")

#: The layers ``--test-disable`` can switch off one by one (test-only).
LAYERS: Final = ("namespaces", "chroot", "drop", "landlock", "seccomp")

#: The namespaces the serving process gets, by the name /proc/<pid>/ns shows.
NAMESPACES: Final[Mapping[str, int]] = {
    "mnt": oslib.CLONE_NEWNS,
    "pid": oslib.CLONE_NEWPID,
    "net": oslib.CLONE_NEWNET,
    "ipc": oslib.CLONE_NEWIPC,
    "uts": oslib.CLONE_NEWUTS,
    # last: the root helper stays in the host's (rootless: :mod:`.userns`)
    "user": oslib.CLONE_NEWUSER,
}

#: Where the export's bind mount sits in the serving process's tmpfs root.
EXPORT_MOUNT_POINT: Final = "export"

PR_SET_PDEATHSIG: Final = 1

FORWARDED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class SandboxError(Exception):
    """The requested sandbox cannot be built: the helper refuses to start."""


class Layers(Record):
    """Which layers are on (``--sandbox`` less ``--test-disable``)."""

    __slots__ = LAYERS
    namespaces: bool
    chroot: bool
    drop: bool
    landlock: bool
    seccomp: bool

    def __init__(
        self,
        namespaces: bool = True,
        chroot: bool = True,
        drop: bool = True,
        landlock: bool = True,
        seccomp: bool = True,
    ) -> None:
        self._set(
            namespaces=namespaces, chroot=chroot, drop=drop, landlock=landlock, seccomp=seccomp
        )

    @classmethod
    def from_options(cls, sandbox: str, disabled: frozenset[str]) -> Layers:
        on = {layer: layer not in disabled for layer in LAYERS}
        if sandbox != "namespace":
            on["namespaces"] = False
        if sandbox == "none":
            on["chroot"] = False
        return cls(**on)


def namespace_ids(proc_fd: int | None = None, pid: str = "self") -> dict[str, int]:
    """The inode of each namespace in :data:`NAMESPACES` of ``pid``, read from
    ``/proc/<pid>/ns/*`` (through ``proc_fd``, a procfs root, if given)."""
    base = f"{pid}/ns" if proc_fd is not None else f"/proc/{pid}/ns"
    return {name: os.stat(f"{base}/{name}", dir_fd=proc_fd).st_ino for name in NAMESPACES}


# -- the process model ---------------------------------------------------------


def fork_serving_process(*, new_pid_namespace: bool) -> tuple[int, int]:
    """Fork the serving process, pid 1 of a new pid namespace if asked.

    Returns ``(pid, fd)`` in the parent: the child's pid and the write end of
    a pipe the parent holds until it exits. Returns ``(0, fd)`` in the
    child, with the pipe's read end, for :func:`become_serving_process`.
    """
    if new_pid_namespace:
        try:
            # affects the children made from now on: the next fork is pid 1
            oslib.unshare(oslib.CLONE_NEWPID)
        except OSError as exc:
            raise SandboxError(f"cannot make a pid namespace: {exc.strerror}") from None
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(alive_r)
        return pid, alive_w
    os.close(alive_w)
    return 0, alive_r


def become_serving_process(parent_alive: int) -> None:
    """In the child: not dumpable (no process of its user may ptrace it or
    open its fds), die with the parent, and end cleanly on SIGTERM/SIGINT.

    A handler the embedding program installed (``virtfs-proto``'s one-line
    exit) is kept; Python's defaults are replaced.
    """
    # at once, not after the set-up: a tracer attached in between would stay
    privileges.prctl(privileges.PR_SET_DUMPABLE, 0)
    die_with_parent(parent_alive)
    for signum in FORWARDED_SIGNALS:
        current = signal.getsignal(signum)
        if not callable(current) or current is signal.default_int_handler:
            signal.signal(signum, _terminate)


def die_with_parent(parent_alive: int) -> None:
    """PR_SET_PDEATHSIG(SIGKILL), then make sure the parent had not already gone.

    getppid() cannot tell (from a new pid namespace the parent is always
    0), so the parent holds a pipe's write end: EOF on ``parent_alive``
    means it is gone. Call it again after any change of credentials: the
    kernel clears the death signal then.
    """
    privileges.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    gone, _, _ = select.select([parent_alive], [], [], 0)
    if gone:
        os._exit(signal_exit_status(signal.SIGKILL))


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # pid 1 of a pid namespace gets no default action from its own
    # namespace: the handler is what makes SIGTERM end it
    raise SystemExit(signal_exit_status(signum))


def signal_exit_status(signum: int) -> int:
    """The shell's status for death by ``signum``: 128 + n."""
    return 128 + signum


def wait_for_child(pid: int) -> int:
    """In the parent: forward SIGTERM/SIGINT to ``pid``, wait, and end as it ended.

    A child killed by a signal kills the parent with the same signal (so
    the launcher sees, say, SIGSYS from seccomp); if that signal does not
    kill it, the status is 128 + n.
    """

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    _, status = os.waitpid(pid, 0)  # PEP 475: retried after each forwarded signal
    if os.WIFSIGNALED(status):
        killer = os.WTERMSIG(status)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(killer, signal.SIG_DFL)
        os.kill(os.getpid(), killer)
        return signal_exit_status(killer)
    return os.waitstatus_to_exitcode(status)


# -- the namespaces --------------------------------------------------------------


def enter_namespaces(root_fd: int, *, chroot: bool) -> tuple[int, int]:
    """New mount, net, ipc and uts namespaces (the pid one is the fork's) and
    a root of the serving process's own; returns ``(export_fd, proc_fd)``.

    The root is an empty tmpfs holding a private, ``nodev,nosuid`` bind
    mount of the export (``root_fd``): pivot_root into the tmpfs, detach the
    old root, and chroot into the export's bind mount (the kernel refuses a
    user namespace to a chrooted process; a pivot_root straight into the
    export would lose that refusal). ``export_fd`` is an O_PATH fd of the
    bind mount's root, the resolver's new root: every fd the helper hands
    out then carries ``nodev``. ``proc_fd`` is a procfs of the new pid
    namespace attached nowhere (made while a full /proc is still in view,
    as the kernel requires). Without ``chroot`` (a test-only configuration)
    the root stays the tmpfs and the cwd is the export.
    """
    nodev = oslib.MOUNT_ATTR_NODEV | oslib.MOUNT_ATTR_NOSUID
    step = "unshare"
    try:
        # unshare() moves the cwd to its copy in the new namespace: this is
        # how the export is found there without a name
        os.fchdir(root_fd)
        oslib.unshare(
            oslib.CLONE_NEWNS | oslib.CLONE_NEWNET | oslib.CLONE_NEWIPC | oslib.CLONE_NEWUTS
        )
        phase("sandbox: unshare")
        step = "private mounts"
        oslib.mount(None, "/", None, oslib.MS_REC | oslib.MS_PRIVATE)
        phase("sandbox: private mounts")
        step = "procfs"
        proc_fd = oslib.detached_procfs()
        phase("sandbox: procfs")
        step = "open_tree"
        # cloned from the new namespace's copy (the cwd): a rootless helper
        # has CAP_SYS_ADMIN over that namespace only, not over root_fd's;
        # recursive, since mounts inherited from a more privileged namespace
        # are locked to those above them
        export_tree = oslib.clone_tree(oslib.AT_FDCWD)
        try:
            oslib.set_mount_attrs(export_tree, nodev)
            step = "tmpfs root"
            tmpfs = oslib.new_mount(
                "tmpfs", {"size": "4k", "mode": "0755"}, nodev | oslib.MOUNT_ATTR_NOEXEC
            )
            try:
                # over the export's directory, in this private namespace only:
                # a place that surely exists
                oslib.move_mount(tmpfs, oslib.AT_FDCWD, ".")
                os.mkdir(EXPORT_MOUNT_POINT, 0o755, dir_fd=tmpfs)
                step = "export bind mount"
                oslib.move_mount(export_tree, tmpfs, EXPORT_MOUNT_POINT)
                oslib.set_mount_attrs(tmpfs, oslib.MOUNT_ATTR_RDONLY, recursive=False)
                os.fchdir(tmpfs)
            finally:
                os.close(tmpfs)
        finally:
            os.close(export_tree)
        phase("sandbox: tmpfs root, export bind mount")
        step = "pivot_root"
        oslib.pivot_root(".", ".")
        oslib.umount2(".", oslib.MNT_DETACH)  # the old root, stacked beneath the new
        os.chdir("/")
        phase("sandbox: pivot_root")
        step = "chroot"
        if chroot:
            os.chroot(EXPORT_MOUNT_POINT)
            os.chdir("/")
        else:
            os.chdir(EXPORT_MOUNT_POINT)
        phase("sandbox: chroot")
        return os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), proc_fd
    except OSError as exc:
        why = exc.strerror or str(exc)
        if step == "procfs":
            # a user namespace may mount proc only while a fully visible one exists
            why += " (the kernel refuses a procfs here: is /proc partly covered by mounts?)"
        raise SandboxError(f"cannot build the namespace sandbox ({step}): {why}") from None


def describe_namespaces(host: Mapping[str, int], own: Mapping[str, int]) -> str:
    """``namespaces: mnt=new pid=new ...``: each compared with the parent's."""
    return "namespaces: " + " ".join(
        f"{name}={'new' if own[name] != host.get(name) else 'HOST'}" for name in NAMESPACES
    )
