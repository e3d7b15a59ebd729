"""What /proc says about a process: per-thread credentials, descriptors, memory.

Shared by the reference helper (its start-up confinement report, read
through an fd of ``/proc`` kept across the chroot) and the conformance suite
(which inspects any helper from outside). Linux-only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import time

from ._record import Record

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Final

# Linux capability numbers 0..40, in order (linux/capability.h).
_CAP_NAMES: Final = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]


def capability_name(cap: int) -> str:
    """``CAP_CHOWN`` for 0 and so on; ``cap_<n>`` for a number this table lacks."""
    return f"CAP_{_CAP_NAMES[cap]}" if 0 <= cap < len(_CAP_NAMES) else f"cap_{cap}"


def capability_names(mask: int) -> list[str]:
    """The names of the capabilities set in ``mask``."""
    return [capability_name(cap) for cap in range(64) if mask >> cap & 1]


_STATUS_FIELDS: Final = (
    "Uid",
    "Gid",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
)


class ThreadConfinement(Record):
    """What /proc says about one thread of a helper."""

    __slots__ = (
        "cap_amb",
        "cap_bnd",
        "cap_eff",
        "cap_inh",
        "cap_prm",
        "gid",
        "no_new_privs",
        "root",
        "root_dev_ino",
        "tid",
        "uid",
    )
    tid: int
    uid: tuple[int, int, int, int]  # real, effective, saved, fs
    gid: tuple[int, int, int, int]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: int
    root: str  # readlink of task/<tid>/root, as the reader sees it
    root_dev_ino: tuple[int, int] | None

    def __init__(
        self,
        *,
        tid: int,
        uid: tuple[int, int, int, int],
        gid: tuple[int, int, int, int],
        cap_inh: int,
        cap_prm: int,
        cap_eff: int,
        cap_bnd: int,
        cap_amb: int,
        no_new_privs: int,
        root: str,
        root_dev_ino: tuple[int, int] | None,
    ) -> None:
        self._set(
            tid=tid,
            uid=uid,
            gid=gid,
            cap_inh=cap_inh,
            cap_prm=cap_prm,
            cap_eff=cap_eff,
            cap_bnd=cap_bnd,
            cap_amb=cap_amb,
            no_new_privs=no_new_privs,
            root=root,
            root_dev_ino=root_dev_ino,
        )

    def format(self) -> str:
        return (
            f"tid={self.tid} uid={','.join(map(str, self.uid))} "
            f"gid={','.join(map(str, self.gid))} CapEff={self.cap_eff:016x} "
            f"CapPrm={self.cap_prm:016x} CapBnd={self.cap_bnd:016x} "
            f"CapInh={self.cap_inh:016x} CapAmb={self.cap_amb:016x} "
            f"NoNewPrivs={self.no_new_privs} root={self.root}"
            + (
                f" root_inode={self.root_dev_ino[0]}:{self.root_dev_ino[1]}"
                if self.root_dev_ino
                else ""
            )
        )


def confinement_report(
    pid: int | None = None, *, proc_fd: int | None = None
) -> list[ThreadConfinement]:
    """Read ``/proc/<pid>/task/*/status`` and ``task/*/root`` of every thread.

    ``proc_fd`` is an fd of ``/proc`` opened before a chroot, so a jailed
    helper can still report on itself at start-up (it closes that fd before
    it serves anything).
    """
    pid = os.getpid() if pid is None else pid
    base = f"{pid}/task" if proc_fd is not None else f"/proc/{pid}/task"
    dirfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        tids = sorted(int(t) for t in os.listdir(dirfd))
        threads = []
        for tid in tids:
            try:
                fd = os.open(f"{tid}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
            except FileNotFoundError:
                continue  # the thread ended while we looked
            try:
                text = os.read(fd, 1 << 16).decode()
            finally:
                os.close(fd)
            fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
            missing = [f for f in _STATUS_FIELDS if f not in fields]
            if missing:
                raise OSError(errno.EPROTO, f"/proc status lacks {missing}")
            try:
                root = os.readlink(f"{tid}/root", dir_fd=dirfd)
                st = os.stat(f"{tid}/root", dir_fd=dirfd)
                dev_ino: tuple[int, int] | None = (st.st_dev, st.st_ino)
            except OSError as exc:
                root, dev_ino = f"<{errno.errorcode.get(exc.errno or 0, exc.errno)}>", None
            uid = tuple(int(v) for v in fields["Uid"].split())
            gid = tuple(int(v) for v in fields["Gid"].split())
            threads.append(
                ThreadConfinement(
                    tid=tid,
                    uid=(uid[0], uid[1], uid[2], uid[3]),
                    gid=(gid[0], gid[1], gid[2], gid[3]),
                    cap_inh=int(fields["CapInh"], 16),
                    cap_prm=int(fields["CapPrm"], 16),
                    cap_eff=int(fields["CapEff"], 16),
                    cap_bnd=int(fields["CapBnd"], 16),
                    cap_amb=int(fields["CapAmb"], 16),
                    no_new_privs=int(fields["NoNewPrivs"]),
                    root=root,
                    root_dev_ino=dev_ino,
                )
            )
        return threads
    finally:
        os.close(dirfd)


def status_field(pid: int | str, name: str, *, proc_fd: int | None = None) -> str:
    """The value of the ``name:`` line of ``/proc/<pid>/status`` ("" if absent);
    through ``proc_fd``, a procfs root, if given."""
    path = f"{pid}/status" if proc_fd is not None else f"/proc/{pid}/status"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    try:
        text = os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def object_id(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of what ``path`` names: how the suite tells objects apart."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def fd_objects(pid: int) -> dict[int, tuple[int, int, bool]]:
    """Each open descriptor of ``pid`` as ``(st_dev, st_ino, is_directory)``,
    by stat through ``/proc/<pid>/fd/N`` (not by the link's text)."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile, or not stat-able
            st = os.stat(f"/proc/{pid}/fd/{name}")
            out[int(name)] = (st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> dict[int, str]:
    """Each open descriptor of ``pid`` and what /proc says it points to."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return out


def is_own_fd_table(pid: int, fd: int) -> bool:
    """Whether ``pid``'s descriptor ``fd`` is a procfs view of ``pid``'s own fd table.

    That is the one descriptor outside its export a helper may hold (the
    spec's reopen directory). Told by the object, not by the link's text (a
    helper in its own namespaces shows paths the reader cannot interpret):
    a directory on a procfs (the superblock's magic number) that, followed,
    lists exactly the descriptors ``/proc/<pid>/fd`` lists.
    """
    link = f"/proc/{pid}/fd/{fd}"
    for _ in range(3):  # the helper may open or close an fd between the two listings
        try:
            if not (stat.S_ISDIR(os.stat(link).st_mode) and _is_procfs(link)):
                return False
            if sorted(os.listdir(link)) == sorted(os.listdir(f"/proc/{pid}/fd")):
                return True
        except OSError:
            return False
    return False


_PROC_SUPER_MAGIC: Final = 0x9FA0
_libc = ctypes.CDLL(None, use_errno=True)


def _is_procfs(path: str) -> bool:
    # os.statvfs has no f_type, and a detached procfs has a device of its
    # own: ask statfs(2), whose struct begins with the long f_type
    buf = (ctypes.c_long * 32)()
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf[0] == _PROC_SUPER_MAGIC


def serving_pid(pid: int) -> int:
    """The process that serves for the helper started as ``pid``.

    The process model (spec: the helper): a helper may fork one serving
    process (ours: pid 1 of its own pid namespace) and wait for it; a helper
    with exactly one child serves in that child, otherwise in ``pid``
    itself (QEMU's helper).
    """
    kids = children(pid)
    return kids[0] if len(kids) == 1 else pid


def same_object(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file: ``(st_dev, st_ino)``."""
    return object_id(a) == object_id(b)


def _read_text(path: str) -> str:
    # not pathlib: the helper imports this module, and pathlib costs it start-up time
    with open(path) as f:
        return f.read()


def rss_kib(pid: int) -> int:
    """Resident set size: every page ``pid`` maps that is in memory, shared or not."""
    for line in _read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: each resident page divided by the number of
    processes that map it (``smaps_rollup``). Summed over processes that share
    pages (a parent and its forked child), each page counts once; RSS would
    count it once per process."""
    for line in _read_text(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def settled_fd_count(pid: int, timeout: float = 1.0) -> int:
    """The fd count once two readings 20 ms apart agree (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last = fd_count(pid)
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = fd_count(pid)
        if now == last:
            return now
        last = now
    return last


def _states(pid: int) -> list[str]:
    return [
        _read_text(f"/proc/{pid}/task/{t}/stat").rsplit(")", 1)[1].split()[0]
        for t in os.listdir(f"/proc/{pid}/task")
    ]


def wait_stopped(pid: int, timeout: float) -> bool:
    """Wait until every thread of ``pid`` is stopped (state T); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(s == "T" for s in _states(pid)):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return False
        time.sleep(0.002)
    return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from each one's ``/proc/N/stat``)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _read_text(f"/proc/{name}/stat").rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(name))
    return out
