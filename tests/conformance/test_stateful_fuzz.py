"""Stateful fuzzing: random sequences of valid and malformed requests against a helper.

Invariants after every step: the helper is alive (or, after a fatal frame, exited
without a signal and is restarted), the sentinels outside the export are unread
and unchanged, every reply arrives within the timeout and decodes, and the
helper's descriptor count stays bounded.

Runs against this project's helper; ``VIRTFS_FUZZ_HELPER`` (a shell-like command)
points it elsewhere, e.g. at QEMU's helper, which dies on some inputs (its known
defects).
"""

from __future__ import annotations

import os
import shlex
import stat
import sys

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from virtfs_proto import messages as m
from virtfs_proto import procfs
from virtfs_proto.codec import codecs_for, decode_request, encode_request
from virtfs_proto.constants import HEADER_SIZE, UTIME_NOW, UTIME_OMIT
from virtfs_proto.errors import ProxyProtocolError
from virtfs_proto.kit.conformance.session import HelperSession
from virtfs_proto.kit.conformance.workspace import Workspace

HELPER = shlex.split(os.environ.get("VIRTFS_FUZZ_HELPER", "")) or [
    sys.executable,
    "-m",
    "virtfs_proto.server",
]
H = codecs_for().header_struct
#: slack over the helper's idle descriptor count (it may cache a few)
FD_SLACK = 8
TIMEOUT = 3.0

NAMES = [
    "",
    "file.txt",
    "empty.txt",
    "dir",
    "dir/nested.txt",
    "dir/sub",
    "emptydir",
    "link_file",
    "link_dir",
    "escape_rel",
    "escape_abs",
    "escape_dir/secret.txt",
    "escape_dir_abs/secret.txt",
    "escape_deep/etc",
    "escape_dangling",
    "loop",
    "fifo",
    "link_fifo",
    "sock",
    "chardev",
    "sgid_dir",
    "suid.bin",
    "new",
    "dir/new",
    "../outside/secret.txt",
    "../../..",
    "missing/x",
]

names = st.sampled_from(NAMES).map(os.fsencode)
vpaths = st.builds(lambda n, nul: b"//" + n + (b"\0" if nul else b""), names, st.booleans())
spaths = names.map(lambda n: b"//" + n)
ids = st.sampled_from([0, 1000, 1234, 65534, 0xFFFFFFFF])
ints32 = st.sampled_from([0, 1, 2, 3, 4, 255, 4096, 65534, 65535, 65536, 0x7FFFFFFF, -1, -(2**31)])
open_flags = st.sampled_from(
    [
        os.O_RDONLY,
        os.O_WRONLY,
        os.O_RDWR,
        os.O_RDONLY | os.O_DIRECTORY,
        os.O_RDONLY | os.O_NONBLOCK,
        os.O_WRONLY | os.O_TRUNC,
        os.O_RDWR | os.O_CREAT,
        os.O_RDWR | os.O_CREAT | os.O_EXCL,
        os.O_WRONLY | os.O_APPEND,
    ]
)
modes = st.sampled_from(
    [0o644, 0o600, 0o4755, 0o2775, 0o1777, stat.S_IFIFO | 0o644, stat.S_IFREG | 0o600, 0]
)
nsecs = st.sampled_from([0, 1, 999_999_999, 10**9, UTIME_NOW, UTIME_OMIT, -1])
xattr_names = st.sampled_from(
    [b"user.comment", b"user.new", b"trusted.x", b"security.capability", b"system.x", b"", b"x"]
)

requests = st.one_of(
    st.builds(m.OpenRequest, vpaths, open_flags),
    st.builds(m.CreateRequest, spaths, open_flags, modes, ids, ids),
    st.builds(
        m.MknodRequest,
        ids,
        ids,
        spaths,
        st.sampled_from([stat.S_IFIFO | 0o600, stat.S_IFREG | 0o644, stat.S_IFCHR | 0o666]),
        st.sampled_from([0, os.makedev(1, 3)]),
    ),
    st.builds(m.MkdirRequest, ids, ids, spaths, modes),
    st.builds(m.SymlinkRequest, ids, ids, names, spaths),
    st.builds(m.LinkRequest, vpaths, spaths),
    st.builds(m.LstatRequest, vpaths),
    st.builds(m.ReadlinkRequest, vpaths, ints32),
    st.builds(m.StatfsRequest, vpaths),
    st.builds(m.ChmodRequest, vpaths, modes),
    st.builds(m.ChownRequest, vpaths, ids, ids),
    st.builds(m.TruncateRequest, vpaths, st.sampled_from([0, 1, 100, -1, 2**40])),
    st.builds(m.UtimeRequest, vpaths, st.integers(-1, 2**33), nsecs, st.integers(0, 10), nsecs),
    st.builds(m.RenameRequest, spaths, spaths),
    st.builds(m.RemoveRequest, spaths),
    st.builds(m.LgetxattrRequest, ints32, vpaths, xattr_names),
    st.builds(m.LlistxattrRequest, ints32, vpaths),
    st.builds(
        m.LsetxattrRequest,
        vpaths,
        xattr_names,
        st.binary(max_size=64),
        st.sampled_from([0, 1, 3, 64, 1000, -1]),
        st.sampled_from([0, 1, 2, 3, 4]),
    ),
    st.builds(m.LremovexattrRequest, vpaths, xattr_names),
    st.builds(m.GetversionRequest, vpaths),
)


def _decode_as(frame: bytes, fallback: m.Request) -> m.Request:
    """What a helper will take the mutated frame to be (the reply's shape depends on it)."""
    try:
        return decode_request(frame, lenient=True)
    except ProxyProtocolError:
        return fallback


class HelperMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ws = Workspace()
        self.ws.build_export()
        self.before = self.ws.snapshot()
        self.helper = self._start()
        self.base_fds = self._fds()

    def _start(self) -> HelperSession:
        return HelperSession(HELPER, self.ws.export, "fd", rundir=self.ws.rundir)

    def _fds(self) -> int:
        return procfs.settled_fd_count(self.helper.pid, timeout=0.3)

    def _exchange(self, frame: bytes, decode_as: m.Request) -> None:
        reply = self.helper.call_raw(frame, decode_as, timeout=TIMEOUT)
        if isinstance(reply, m.FdReply):
            st_mode = os.fstat(reply.fd).st_mode
            os.close(reply.fd)
            assert stat.S_ISREG(st_mode) or stat.S_ISDIR(st_mode), "fd to a special file"

    @rule(request=requests)
    def valid_request(self, request: m.Request) -> None:
        self._exchange(encode_request(request), request)

    @rule(request=requests, data=st.data())
    def mutated_payload(self, request: m.Request, data: st.DataObject) -> None:
        """Payload bytes changed, cut or extended; the header stays valid (non-fatal)."""
        frame = bytearray(encode_request(request))
        payload = frame[HEADER_SIZE:]
        how = data.draw(st.sampled_from(["flip", "cut", "extend", "strlen"]))
        if how == "flip" and payload:
            for _ in range(data.draw(st.integers(1, 4))):
                i = data.draw(st.integers(0, len(payload) - 1))
                payload[i] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del payload[data.draw(st.integers(0, len(payload))) :]
        elif how == "extend":
            payload += data.draw(st.binary(min_size=1, max_size=32))
        elif how == "strlen" and len(payload) >= 2:
            at = data.draw(st.sampled_from([0, 4])) if len(payload) > 6 else 0
            payload[at : at + 2] = data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "little")
        t, _ = H.unpack_from(frame, 0)
        mutated = H.pack(t, len(payload)) + bytes(payload)
        self._exchange(mutated, _decode_as(mutated, request))

    @rule(requests_=st.lists(requests, min_size=2, max_size=8))
    def pipelined(self, requests_: list[m.Request]) -> None:
        self.helper.pipeline(requests_)
        for _ in requests_:
            reply = self.helper.next_reply(TIMEOUT)
            if isinstance(reply, m.FdReply):
                os.close(reply.fd)

    @rule(
        kind=st.sampled_from(["type", "oversize", "eof"]),
        value=st.sampled_from([0, 1, 22, 255, 0xFFFFFFFF]),
    )
    def fatal_frame(self, kind: str, value: int) -> None:
        """A fatal frame: no reply, the helper exits (not by a signal); then restart it."""
        frame = encode_request(m.LstatRequest(b"/\0"))
        if kind == "type":
            frame = H.pack(value, 4) + frame[HEADER_SIZE:]
        elif kind == "oversize":
            frame = H.pack(8, 65537 + value % 1000) + frame[HEADER_SIZE:]
        else:
            frame = frame[: 1 + value % 10]
        self.helper.send_raw(frame)
        if kind == "eof":
            self.helper.shutdown_write()
        got, eof = self.helper.read_raw(TIMEOUT)
        assert got == b"" and eof, "a fatal frame was answered or the connection stayed open"
        status = self.helper.wait_exit(TIMEOUT)
        assert status is not None and status >= 0, f"helper ended with {status}"
        self.helper.close()
        self.helper = self._start()

    @invariant()
    def helper_alive(self) -> None:
        assert self.helper.alive(), f"helper {self.helper.status()}: {self.helper.log()[-500:]}"

    @invariant()
    def no_escape(self) -> None:
        assert self.ws.differences(self.before, self.ws.snapshot()) == []

    @invariant()
    def fds_bounded(self) -> None:
        assert self._fds() <= self.base_fds + FD_SLACK

    def teardown(self) -> None:
        self.helper.close()
        self.ws.cleanup()


HelperMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.root
class TestHelperStateful(HelperMachine.TestCase):  # type: ignore[misc,valid-type]
    pass
