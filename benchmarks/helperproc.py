"""A helper on a socketpair, measured from outside, and the raw client that drives it.

Shared by ``bench_helper.py`` and ``bench_startup.py`` (they run as
scripts, so this directory is on ``sys.path``). Not a test, not part of the
package.

* :func:`spawn` starts a helper the way a management tool does: one end of a
  socketpair inherited as ``-f FD``, ``-n``.
* :class:`ProcessTree` sums CPU time and RSS over every process of one
  helper (a sandboxed helper has a parent and a serving child).
* :class:`StructClient` is the smallest correct client, as QEMU's C client
  is: request frames built once, ``sendall``, ``recv_into`` a preallocated
  buffer, ``recvmsg`` only for FD replies, received fds closed at once.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from virtfs_proto import messages as m
from virtfs_proto.codec import codecs_for, encode_request
from virtfs_proto.constants import (
    HEADER_SIZE,
    PROXY_MAX_IO_SZ,
    REPLY_KIND,
    V9FS_FD_VALID,
    MessageType,
    ReplyKind,
)
from virtfs_proto.procfs import children, pss_kib, rss_kib

#: Room for more descriptors than a reply may carry, so a helper that sends
#: two is caught rather than truncated away.
CONTROL_SPACE = socket.CMSG_SPACE(4 * 4)


def spawn(
    command: Sequence[str], export: Path, *extra: str, stderr: int = subprocess.DEVNULL
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """Start ``command -p EXPORT -f FD -n``; the caller owns the returned socket end."""
    ours_end, helper_end = socket.socketpair()
    fd = helper_end.fileno()
    proc = subprocess.Popen(
        [*command, "-p", str(export), "-f", str(fd), "-n", *extra],
        pass_fds=[fd],
        stderr=stderr,
        cwd="/",  # not a source tree: `-m` and `-c` would import from the current directory
    )
    helper_end.close()
    return ours_end, proc


def _descendants(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        out += [child, *_descendants(child)]
    return out


def _cpu_ns(pid: int) -> int:
    """CPU time of ``pid``'s live threads, in ns.

    From ``/proc/PID/task/TID/schedstat`` (time on a CPU, user and system
    alike): ``utime``/``stime`` in ``/proc/PID/stat`` count 10 ms ticks,
    too coarse for a 2 ms start-up or a short batch.
    """
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:  # it exited
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue
    return total


class ProcessTree:
    """Every process of one helper: the Popen pid and its descendants.

    The tree is read again by :meth:`refresh` (a scan of ``/proc``); CPU and
    RSS are then read per known pid, cheaply enough to do between batches.
    """

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.pids = [pid]

    def refresh(self) -> list[int]:
        self.pids = [self.root, *_descendants(self.root)]
        return self.pids

    def cpu_seconds(self) -> float:
        return sum(self.cpu_ns_by_pid().values()) / 1e9

    def cpu_ns_by_pid(self) -> dict[int, int]:
        return {pid: _cpu_ns(pid) for pid in self.pids}

    def rss_kib(self) -> int:
        """RSS summed: pages a parent and its forked child share count twice."""
        return self._sum(rss_kib)

    def pss_kib(self) -> int:
        """PSS summed: every page the tree maps counts once (split among sharers)."""
        return self._sum(pss_kib)

    def per_process_kib(self) -> list[tuple[int, int, int]]:
        """(pid, RSS, PSS) of each process."""
        return [(pid, rss_kib(pid), pss_kib(pid)) for pid in self.pids]

    def _sum(self, read: Callable[[int], int]) -> int:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(FileNotFoundError):  # it exited
                total += read(pid)
        return total


class HelperFailed(RuntimeError):
    """A round trip completed, but not as expected (an error, a wrong shape)."""


class Frame:
    """One request, encoded once by the codec, and what its reply must be."""

    __slots__ = ("data", "errno", "kind", "name")

    def __init__(self, request: m.Request, errno: int = 0) -> None:
        self.data = encode_request(request)
        self.kind = REPLY_KIND[request.TYPE]
        self.name = request.TYPE.name
        #: 0: the request must succeed; else the errno it must fail with
        self.errno = errno


class StructClient:
    """A client with no codec objects at run time, like QEMU's C client.

    Replies are parsed only as far as the header and the status or errno:
    enough to know the round trip completed, and completed as expected. One
    request at a time, so a ``recv_into`` can never take bytes of the next
    reply; a short read is completed in a loop.
    """

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.name = name
        self.buf = bytearray(HEADER_SIZE + PROXY_MAX_IO_SZ)
        self.view = memoryview(self.buf)
        codecs = codecs_for()
        # The wire formats come from the codec's definitions (layouts.py).
        self._header = codecs.header_struct.unpack_from
        self._int32 = codecs.int32.unpack_from

    def run(self, frames: Sequence[Frame], n: int) -> None:
        """Send ``frames`` in order, ``n`` times over, checking every reply."""
        sendall = self.sock.sendall
        recv_into = self.sock.recv_into
        recvmsg = self.sock.recvmsg
        view = self.view
        header = self._header
        int32 = self._int32
        fd_kind = ReplyKind.FD
        status_kind = ReplyKind.STATUS
        success = MessageType.T_SUCCESS
        error = MessageType.T_ERROR
        for _ in range(n):
            for frame in frames:
                sendall(frame.data)
                if frame.kind is fd_kind:
                    data, ancdata, _, _ = recvmsg(4, CONTROL_SPACE)
                    fds = received_fds(ancdata)
                    for fd in fds:  # closed at once: the client only wants the round trip
                        os.close(fd)
                    if len(data) != 4:
                        raise HelperFailed(f"{self.name}: {frame.name}: short FD reply {data!r}")
                    (value,) = int32(data, 0)
                    if value == V9FS_FD_VALID and len(fds) == 1 and frame.errno == 0:
                        continue
                    if frame.errno and value == -frame.errno and not fds:
                        continue
                    raise HelperFailed(
                        f"{self.name}: {frame.name}: FD reply {value} with {len(fds)} fds,"
                        f" expected errno {frame.errno}"
                    )
                have = recv_into(view)
                while have < HEADER_SIZE:
                    got = recv_into(view[have:])
                    if not got:
                        raise HelperFailed(f"{self.name}: {frame.name}: connection closed")
                    have += got
                mtype, size = header(view, 0)
                if size > PROXY_MAX_IO_SZ:
                    raise HelperFailed(f"{self.name}: {frame.name}: reply announces {size} bytes")
                end = HEADER_SIZE + size
                while have < end:
                    got = recv_into(view[have:end])
                    if not got:
                        raise HelperFailed(f"{self.name}: {frame.name}: connection closed")
                    have += got
                if have != end:
                    raise HelperFailed(f"{self.name}: {frame.name}: {have - end} bytes too many")
                expected = frame.errno
                if mtype == success and not expected:
                    if frame.kind is not status_kind:
                        continue
                    if size == 4 and not int32(view, HEADER_SIZE)[0]:
                        continue
                elif (
                    mtype == error and expected and size == 4
                    and int32(view, HEADER_SIZE)[0] == -expected
                ):  # fmt: skip
                    continue
                raise HelperFailed(
                    f"{self.name}: {frame.name}: reply type {mtype} size {size}"
                    f" {bytes(view[HEADER_SIZE:end])!r}, expected errno {frame.errno}"
                )


def received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors that came with a reply (the caller closes them)."""
    fds = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder)
                    for i in range(0, len(payload) - len(payload) % 4, 4)]  # fmt: skip
    return fds
