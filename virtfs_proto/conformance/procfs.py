"""What /proc says about a helper process: descriptors, memory, credentials per thread."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: Capabilities a helper may hold after start-up (spec: the privilege model),
#: by number: CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID, MKNOD.
ALLOWED_CAPABILITIES: Final = {
    0: "CAP_CHOWN",
    1: "CAP_DAC_OVERRIDE",
    2: "CAP_DAC_READ_SEARCH",
    3: "CAP_FOWNER",
    4: "CAP_FSETID",
    27: "CAP_MKNOD",
}
ALLOWED_MASK: Final = sum(1 << c for c in ALLOWED_CAPABILITIES)

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


def cap_names(mask: int) -> list[str]:
    """``CAP_*`` names of the bits set in ``mask``."""
    return [
        f"CAP_{_CAP_NAMES[b]}" if b < len(_CAP_NAMES) else f"cap{b}"
        for b in range(64)
        if mask >> b & 1
    ]


@dataclass(frozen=True, slots=True)
class ThreadCreds:
    """One thread's credentials from /proc/<pid>/task/<tid>/status."""

    tid: int
    uids: tuple[int, ...]  # real, effective, saved, fs
    gids: tuple[int, ...]
    cap_inh: int
    cap_prm: int
    cap_eff: int
    cap_bnd: int
    cap_amb: int
    no_new_privs: int
    root: str


def thread_creds(pid: int) -> list[ThreadCreds]:
    """Every thread of ``pid``; threads that exit while being read are skipped."""
    out = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = Path(f"/proc/{pid}/task/{tid}")
        try:
            fields = dict(
                line.split(":", 1) for line in base.joinpath("status").read_text().splitlines()
            )
            root = os.readlink(base / "root")
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append(
            ThreadCreds(
                tid=int(tid),
                uids=tuple(int(x) for x in fields["Uid"].split()),
                gids=tuple(int(x) for x in fields["Gid"].split()),
                cap_inh=int(fields["CapInh"], 16),
                cap_prm=int(fields["CapPrm"], 16),
                cap_eff=int(fields["CapEff"], 16),
                cap_bnd=int(fields["CapBnd"], 16),
                cap_amb=int(fields.get("CapAmb", "0"), 16),
                no_new_privs=int(fields.get("NoNewPrivs", "0")),
                root=root,
            )
        )
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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
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
        Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
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
