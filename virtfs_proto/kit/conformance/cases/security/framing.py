"""Security cases: framing (spec: security.rst)."""

from __future__ import annotations

import errno as E
import os
import signal
import time
from collections.abc import Callable

from ..... import messages as m
from ..... import procfs
from .....codec import encode_request
from .....constants import HEADER_SIZE, MessageType
from ...model import HELPER_PROC, Context, Deviation, Name, case, errname, qemu, qpath, show
from ...workspace import FILE_CONTENT
from ..behaviour import read_all
from ._common import O_RD, H


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


_LSTAT = qemu(m.LstatRequest, qpath("file.txt"))

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
    reply = ctx.ok(qemu(m.ReadlinkRequest, qpath("link_file"), 4096))
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), "out of step after the bad frame")


@case("security", "framing", name="frame.payload_too_short")
def frame_short(ctx: Context) -> None:
    """Payloads shorter than their fields: ENOBUFS in the right shape, still in step."""
    owner = os.lstat(ctx.host("file.txt")).st_uid  # root's, or a rootless run's user's
    for req, size in (
        (_LSTAT, 1),
        (qemu(m.OpenRequest, qpath("file.txt"), O_RD), 3),
        (qemu(m.ChownRequest, qpath("file.txt"), 1, 1), 12),
    ):
        data = encode_request(req)
        t, _ = H.unpack_from(data, 0)
        reply = ctx.helper.call_raw(H.pack(t, size) + data[HEADER_SIZE : HEADER_SIZE + size], req)
        ctx.expect(reply == m.ErrorReply(E.ENOBUFS), f"{req.TYPE.name}: {show(reply)}")
        _in_sync(ctx)
    ctx.expect(os.lstat(ctx.host("file.txt")).st_uid == owner, "the short chown was performed")


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
    req = qemu(m.CreateRequest, qpath("short_new"), os.O_RDWR | os.O_CREAT, 0o644, *ctx.ids)
    reply = ctx.helper.call_raw(_frame(req, cut=12, size=len(req.path) + 2 + 4), req)
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
    req = qemu(m.LstatRequest, Name(b"/" + b"m" * 65532))
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
            qemu(m.OpenRequest, qpath("file.txt" if i % 2 else "dir/nested.txt"), O_RD),
            qemu(m.LstatRequest, qpath("missing")),
            qemu(m.ReadlinkRequest, qpath("link_file"), 4096),
            qemu(m.LgetxattrRequest, 100, qpath("file.txt"), b"user.comment"),
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
    data = encode_request(qemu(m.ReadlinkRequest, qpath("link_file"), 4096))
    ctx.helper.conn.send_request(qemu(m.ReadlinkRequest, qpath("link_file"), 4096))
    for i in range(len(data)):
        ctx.helper.send_raw(data[i : i + 1])
        time.sleep(0.001)
    reply = ctx.helper.next_reply()
    ctx.expect(reply == m.ReadlinkReply(b"file.txt"), show(reply))


@case("security", "framing", name="frame.unsolicited_fds", needs=HELPER_PROC)
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
    _close_before_reply(ctx, qemu(m.OpenRequest, qpath("file.txt"), O_RD))


@case("security", "framing", name="frame.eof_between_requests", fatal=True)
def frame_eof(ctx: Context) -> None:
    """EOF between requests: the helper exits cleanly."""
    _in_sync(ctx)
    ctx.helper.shutdown_write()
    got, eof = ctx.helper.read_raw(3.0)
    ctx.expect(not got and eof, "the helper did not close after EOF")
