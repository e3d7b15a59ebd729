#!/usr/bin/env python3
"""Codec throughput: the fast path, plain construct, and a hand-written struct baseline.

Run it (it is a script, not a test)::

    .venv/bin/python benchmarks/bench_codec.py [--seconds 0.3] [--repeat 5]

One operation is a whole exchange: encode the request, decode it, encode the
reply, decode it (what a client and a helper do between them). The message
mix is T_LSTAT + stat reply, T_OPEN + fd reply, T_MKDIR + status reply,
T_READLINK + string reply and T_LSETXATTR + status reply. Three codecs run on
the same mix in one process, side by side:

(a) ``fast``: :mod:`virtfs_proto.codec` (the struct plans compiled from the
    construct definitions);
(b) ``construct``: the same definitions interpreted by construct
    (``build``/``parse``), plus the header and the dataclass construction;
(c) ``struct``: a BASELINE written by hand below with :mod:`struct`, used
    nowhere else, only to say what "as fast as hand-written code" means.

Before timing, the script checks that all three produce the same bytes and
the same messages. Ratios are of time per operation: ``fast/struct`` is how
many times longer the fast path takes than the baseline (target: <= 3).
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import astuple, fields
from typing import Any

from virtfs_proto import messages as m
from virtfs_proto.codec import decode_reply, decode_request, encode_reply, encode_request
from virtfs_proto.constants import HOST_BYTE_ORDER, V9FS_FD_VALID, ByteOrder, MessageType
from virtfs_proto.layouts import layouts_for

T = MessageType

STAT_VALUES = (2049, 1311234, 1, 0o100644, 1000, 1000, 0, 4096, 4096, 8)
STAT_VALUES += (1700000000, 123456789, 1700000001, 223456789, 1700000002, 323456789)

#: (name, request, reply, fds that come with the reply)
MIX: list[tuple[str, m.Request, m.Reply, tuple[int, ...]]] = [
    (
        "lstat + stat",
        m.LstatRequest(b"//dir/file.txt\x00"),
        m.StatReply(*STAT_VALUES),
        (),
    ),
    ("open + fd", m.OpenRequest(b"//dir/file.txt\x00", 0o100002), m.FdReply(7), (7,)),
    ("mkdir + status", m.MkdirRequest(1000, 1000, b"//dir/sub", 0o755), m.StatusReply(), ()),
    (
        "readlink + string",
        m.ReadlinkRequest(b"//dir/link\x00", 4096),
        m.ReadlinkReply(b"../target/somewhere"),
        (),
    ),
    (
        "lsetxattr + status",
        m.LsetxattrRequest(b"//dir/file.txt\x00", b"user.comment", b"some value", 10, 0),
        m.StatusReply(),
        (),
    ),
]


# -- (a) the fast path -------------------------------------------------------------


def fast_exchange(order: ByteOrder) -> Callable[[m.Request, m.Reply, tuple[int, ...]], Any]:
    def run(request: m.Request, reply: m.Reply, fds: tuple[int, ...]) -> Any:
        req = decode_request(encode_request(request, byteorder=order), byteorder=order)
        return req, decode_reply(req, encode_reply(req, reply, byteorder=order), fds=fds,
                                 byteorder=order)  # fmt: skip

    return run


# -- (b) plain construct ---------------------------------------------------------


def construct_exchange(order: ByteOrder) -> Callable[[m.Request, m.Reply, tuple[int, ...]], Any]:
    layouts = layouts_for(order)
    header = layouts.header
    fd_layout = layouts.replies["fd"]
    int32 = layouts.replies["status"]

    def names(cls: type[Any]) -> list[str]:
        return [f.name for f in fields(cls)]

    req_names = {t: names(cls) for t, cls in m.REQUEST_CLASSES.items()}
    reply_names = {name: names(cls) for name, cls in m.REPLY_CLASSES.items()}

    def encode_req(request: m.Request) -> bytes:
        values = dict(zip(req_names[request.TYPE], astuple(request), strict=True))
        payload = layouts.requests[request.TYPE].build(values)
        return bytes(header.build({"type": request.TYPE, "size": len(payload)})) + payload

    def decode_req(data: bytes) -> m.Request:
        head = header.parse(data)
        parsed = layouts.requests[head.type].parse(data[8 : 8 + head.size])
        return m.REQUEST_CLASSES[head.type](*(parsed[n] for n in req_names[head.type]))

    def encode_rep(request: m.Request, reply: m.Reply) -> bytes:
        if isinstance(reply, m.FdReply):
            return bytes(fd_layout.build({"status": V9FS_FD_VALID}))
        if isinstance(reply, m.StatusReply):
            payload = int32.build({"status": 0})
        else:
            values = dict(zip(reply_names[reply.LAYOUT], astuple(reply), strict=True))
            payload = layouts.replies[reply.LAYOUT].build(values)
        return bytes(header.build({"type": T.T_SUCCESS, "size": len(payload)})) + payload

    def decode_rep(request: m.Request, data: bytes, fds: tuple[int, ...]) -> m.Reply:
        if request.TYPE in (T.T_OPEN, T.T_CREATE):
            status = fd_layout.parse(data).status
            return m.FdReply(fds[0]) if status == V9FS_FD_VALID else m.ErrorReply(-status)
        head = header.parse(data)
        body = data[8 : 8 + head.size]
        layout = {
            T.T_LSTAT: "stat",
            T.T_READLINK: "readlink",
            T.T_STATFS: "statfs",
            T.T_GETVERSION: "version",
        }.get(request.TYPE, "status")
        if layout == "status":
            int32.parse(body)
            return m.StatusReply()
        parsed = layouts.replies[layout].parse(body)
        return m.REPLY_CLASSES[layout](*(parsed[n] for n in reply_names[layout]))

    def run(request: m.Request, reply: m.Reply, fds: tuple[int, ...]) -> Any:
        req = decode_req(encode_req(request))
        return req, decode_rep(req, encode_rep(req, reply), fds)

    return run


# -- (c) BASELINE: a hand-written struct codec (for comparison only) -----------------
#
# Written out per message, as one would without any definitions. It checks
# lengths like a careful hand-written decoder would. Used by nothing but this
# benchmark.


def struct_exchange(order: ByteOrder) -> Callable[[m.Request, m.Reply, tuple[int, ...]], Any]:
    e = "<" if order == "little" else ">"
    head = struct.Struct(e + "II")
    u16 = struct.Struct(e + "H")
    i32 = struct.Struct(e + "i")
    mkdir_ids = struct.Struct(e + "II")
    mkdir_mode = struct.Struct(e + "I")
    stat = struct.Struct(e + "QQQIIIQQQQQQQQQQ")
    two_i32 = struct.Struct(e + "ii")
    status_ok = head.pack(T.T_SUCCESS, 4) + i32.pack(0)
    fd_valid = i32.pack(V9FS_FD_VALID)

    def take_string(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
        if pos + 2 > end:
            raise ValueError("truncated")
        (n,) = u16.unpack_from(data, pos)
        pos += 2
        if pos + n > end:
            raise ValueError("truncated")
        return data[pos : pos + n], pos + n

    def frame(mtype: int, payload: bytes) -> bytes:
        return head.pack(mtype, len(payload)) + payload

    def encode_req(r: m.Request) -> bytes:
        if isinstance(r, m.LstatRequest):
            return frame(T.T_LSTAT, u16.pack(len(r.path)) + r.path)
        if isinstance(r, m.OpenRequest):
            return frame(T.T_OPEN, u16.pack(len(r.path)) + r.path + i32.pack(r.flags))
        if isinstance(r, m.MkdirRequest):
            return frame(
                T.T_MKDIR,
                mkdir_ids.pack(r.uid, r.gid) + u16.pack(len(r.path)) + r.path
                + mkdir_mode.pack(r.mode),
            )  # fmt: skip
        if isinstance(r, m.ReadlinkRequest):
            return frame(T.T_READLINK, u16.pack(len(r.path)) + r.path + i32.pack(r.bufsize))
        if isinstance(r, m.LsetxattrRequest):
            return frame(
                T.T_LSETXATTR,
                u16.pack(len(r.path)) + r.path + u16.pack(len(r.name)) + r.name
                + u16.pack(len(r.value)) + r.value + two_i32.pack(r.size, r.flags),
            )  # fmt: skip
        raise NotImplementedError(r)

    def decode_req(data: bytes) -> m.Request:
        mtype, size = head.unpack_from(data)
        end = 8 + size
        if len(data) != end:
            raise ValueError("bad size")
        if mtype == T.T_LSTAT:
            path, pos = take_string(data, 8, end)
            req: m.Request = m.LstatRequest(path)
        elif mtype == T.T_OPEN:
            path, pos = take_string(data, 8, end)
            (flags,) = i32.unpack_from(data, pos)
            pos += 4
            req = m.OpenRequest(path, flags)
        elif mtype == T.T_MKDIR:
            uid, gid = mkdir_ids.unpack_from(data, 8)
            path, pos = take_string(data, 16, end)
            (mode,) = mkdir_mode.unpack_from(data, pos)
            pos += 4
            req = m.MkdirRequest(uid, gid, path, mode)
        elif mtype == T.T_READLINK:
            path, pos = take_string(data, 8, end)
            (bufsize,) = i32.unpack_from(data, pos)
            pos += 4
            req = m.ReadlinkRequest(path, bufsize)
        elif mtype == T.T_LSETXATTR:
            path, pos = take_string(data, 8, end)
            name, pos = take_string(data, pos, end)
            value, pos = take_string(data, pos, end)
            xsize, flags = two_i32.unpack_from(data, pos)
            pos += 8
            req = m.LsetxattrRequest(path, name, value, xsize, flags)
        else:
            raise ValueError("unknown type")
        if pos != end:
            raise ValueError("trailing bytes")
        return req

    def encode_rep(r: m.Request, reply: m.Reply) -> bytes:
        if isinstance(reply, m.FdReply):
            return fd_valid
        if isinstance(reply, m.StatusReply):
            return status_ok
        if isinstance(reply, m.StatReply):
            return head.pack(T.T_SUCCESS, 116) + stat.pack(
                reply.st_dev, reply.st_ino, reply.st_nlink, reply.st_mode, reply.st_uid,
                reply.st_gid, reply.st_rdev, reply.st_size, reply.st_blksize, reply.st_blocks,
                reply.st_atim_sec, reply.st_atim_nsec, reply.st_mtim_sec, reply.st_mtim_nsec,
                reply.st_ctim_sec, reply.st_ctim_nsec,
            )  # fmt: skip
        if isinstance(reply, m.ReadlinkReply):
            n = len(reply.target)
            return head.pack(T.T_SUCCESS, 2 + n) + u16.pack(n) + reply.target
        raise NotImplementedError(reply)

    def decode_rep(r: m.Request, data: bytes, fds: tuple[int, ...]) -> m.Reply:
        if isinstance(r, m.OpenRequest):
            (value,) = i32.unpack(data)
            if value == V9FS_FD_VALID and len(fds) == 1:
                return m.FdReply(fds[0])
            raise ValueError("bad fd reply")
        mtype, size = head.unpack_from(data)
        if len(data) != 8 + size or mtype != T.T_SUCCESS:
            raise ValueError("bad reply")
        if isinstance(r, m.LstatRequest):
            return m.StatReply(*stat.unpack_from(data, 8))
        if isinstance(r, m.ReadlinkRequest):
            target, _ = take_string(data, 8, 8 + size)
            return m.ReadlinkReply(target)
        if size != 4 or i32.unpack_from(data, 8)[0] != 0:
            raise ValueError("bad status")
        return m.StatusReply()

    def run(request: m.Request, reply: m.Reply, fds: tuple[int, ...]) -> Any:
        req = decode_req(encode_req(request))
        return req, decode_rep(req, encode_rep(req, reply), fds)

    return run


# -- measuring ----------------------------------------------------------------------


def ops_per_second(
    run: Callable[[m.Request, m.Reply, tuple[int, ...]], Any],
    cases: list[tuple[m.Request, m.Reply, tuple[int, ...]]],
    seconds: float,
    repeat: int,
) -> float:
    """Best of ``repeat`` timings of whole exchanges over ``cases``."""
    # calibrate the loop count to about ``seconds``
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            for request, reply, fds in cases:
                run(request, reply, fds)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            break
        loops *= 2
    loops = max(1, int(loops * seconds / elapsed))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            for request, reply, fds in cases:
                run(request, reply, fds)
        best = min(best, time.perf_counter() - start)
    return loops * len(cases) / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="per timing (default 0.3)")
    parser.add_argument("--repeat", type=int, default=5, help="timings, best kept (default 5)")
    parser.add_argument("--byteorder", choices=("little", "big"), default=HOST_BYTE_ORDER)
    args = parser.parse_args(argv)
    order: ByteOrder = args.byteorder

    codecs = {
        "fast": fast_exchange(order),
        "construct": construct_exchange(order),
        "struct": struct_exchange(order),
    }
    # All three must agree before their speed means anything.
    for name, request, reply, fds in MIX:
        wire = encode_request(request, byteorder=order)
        results = {label: run(request, reply, fds) for label, run in codecs.items()}
        expected = (request, reply)
        for label, result in results.items():
            if result != expected:
                raise SystemExit(f"{label} disagrees on {name}: {result} != {expected}")
        assert decode_request(wire, byteorder=order) == request

    print(f"Python {sys.version.split()[0]}, byte order {order}; one op = encode+decode of a")
    print("request and encode+decode of its reply. struct = hand-written BASELINE.\n")
    header = f"{'message':<20}" + "".join(f"{label + ' ops/s':>18}" for label in codecs)
    header += f"{'fast/struct':>13}{'construct/struct':>18}"
    print(header)
    print("-" * len(header))
    rows = [(name, [(req, rep, fds)]) for name, req, rep, fds in MIX]
    rows.append(("whole mix", [(req, rep, fds) for _, req, rep, fds in MIX]))
    ratios: dict[str, tuple[float, float]] = {}
    for name, cases in rows:
        rate = {
            label: ops_per_second(run, cases, args.seconds, args.repeat)
            for label, run in codecs.items()
        }
        fast_ratio = rate["struct"] / rate["fast"]
        construct_ratio = rate["struct"] / rate["construct"]
        ratios[name] = (fast_ratio, construct_ratio)
        line = f"{name:<20}" + "".join(f"{rate[label]:>18,.0f}" for label in codecs)
        line += f"{fast_ratio:>12.2f}x{construct_ratio:>17.1f}x"
        print(line)
    fast_ratio, construct_ratio = ratios["whole mix"]
    print(
        f"\nOn the whole mix the fast path takes {fast_ratio:.2f}x the time of the hand-written"
        f" struct baseline (target <= 3x: {'met' if fast_ratio <= 3 else 'NOT met'});"
        f" plain construct takes {construct_ratio:.1f}x."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
