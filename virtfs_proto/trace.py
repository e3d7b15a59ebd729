"""``virtfs-proto trace``: a man-in-the-middle between QEMU and a proxy helper.

The tracer takes QEMU's connection on one side (an inherited socket with
``--listen-fd N``, or a named socket it binds with ``--listen PATH``) and the
helper's on the other (a helper it starts on a socketpair, given after
``--``, or a helper's named socket with ``--connect PATH``). It forwards
every byte and every passed descriptor unchanged and writes each exchange as
one JSON Lines record::

    {"seq": 0, "t": 0.000412, "us": 38.5,
     "request": {"type": "T_LSTAT", "path": "2f00"},
     "reply": {"kind": "stat", "st_dev": ..., ...},
     "fds": 0,
     "hex": {"request": "08000000...", "reply": "00000000..."}}

``request``/``reply`` have the shape ``virtfs-proto decode`` prints (a part
that does not decode is ``{"error": {...}}``); ``hex`` holds the raw frames,
so ``jq -c .hex trace.jsonl | virtfs-proto decode`` decodes them again;
``t`` is when the request was complete (seconds since the trace began) and
``us`` the time until its reply was complete, both seen from the tracer.

Forwarding never waits for decoding and never depends on it: the tracer
reads replies exactly (an FD reply is 4 bytes, others a header and the size
it announces), so a descriptor is always forwarded with the very bytes it
came with. After a request that cannot even be framed (an unknown type, a
frame over 64 KiB) it keeps forwarding but stops decoding.

Usage::

    virtfs-proto trace [-o FILE] (--listen-fd N | --listen PATH [-u UID -g GID])
                       (--connect PATH | -- HELPER [ARGS...])

A helper command gets ``-f N`` appended (its end of a socketpair), or
``{fd}`` in its arguments is replaced by N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from . import messages as m
from .codec import (
    check_request_header,
    codecs_for,
    decode_error_reply,
    decode_reply,
    decode_request,
    reply_bytes_missing,
    request_bytes_missing,
    request_frame_length,
)
from .constants import HEADER_SIZE, PROXY_MAX_IO_SZ, REPLY_KIND, ByteOrder, MessageType
from .errors import (
    AncillaryTruncated,
    ConnectionClosed,
    HelperStartError,
    ProxyProtocolError,
    RemoteProtocolError,
)
from .jsonform import error_to_json, reply_to_json, request_to_json
from .launcher import check_helper_command, start_process, stop_process_tree
from .transport import Transport, close_fds

_CHUNK: Final = HEADER_SIZE + PROXY_MAX_IO_SZ


@dataclass
class TraceStats:
    """What a finished trace saw."""

    exchanges: int = 0
    #: exchanges with a request or reply part that did not decode
    undecoded: int = 0
    #: requests the helper never answered (it closed the connection first)
    unanswered: int = 0
    #: bytes the helper sent with no request outstanding, or after framing was lost
    stray_bytes: int = 0
    #: descriptors QEMU's side sent (it never should; forwarded anyway)
    client_fds: int = 0
    #: reads on which the kernel dropped descriptors (MSG_CTRUNC: too many at once)
    fds_dropped: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.undecoded
            or self.unanswered
            or self.stray_bytes
            or self.client_fds
            or self.fds_dropped
        )


@dataclass
class _Pending:
    seq: int
    type: MessageType
    frame: bytes
    request: m.Request | None
    error: RemoteProtocolError | None
    t: float


@dataclass
class _Side:
    transport: Transport
    readable: bool = True
    writable: bool = True

    def recv(self, n: int, stats: TraceStats) -> tuple[bytes, list[int]]:
        """One ``recvmsg()``; b"" at EOF or a reset."""
        try:
            return self.transport.recv(n, timeout=None)
        except ConnectionClosed:
            return b"", []
        except AncillaryTruncated as exc:
            # More descriptors than the transport has room for: the kernel
            # dropped some (and the transport closed the rest). The bytes
            # still go through; the trace counts the loss.
            stats.fds_dropped += 1
            return exc.data, []


class Tracer:
    """Forward between ``client`` (QEMU's side) and ``helper``, logging each exchange.

    ``out`` receives one JSON line per exchange, flushed as it is written.
    The tracer owns both sockets and closes them when :meth:`run` returns.
    """

    def __init__(
        self,
        client: socket.socket,
        helper: socket.socket,
        out: TextIO,
        *,
        byteorder: ByteOrder | None = None,
        lenient: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = _Side(Transport(client))
        self._helper = _Side(Transport(helper))
        self._out = out
        self._codecs = codecs_for(byteorder)
        self.byteorder: ByteOrder = self._codecs.byteorder
        self._lenient = lenient
        self._clock = clock
        self._t0 = clock()
        self._req_buf = bytearray()
        self._framing_lost = False  # a request could not be framed: forward only
        self._pending: deque[_Pending] = deque()
        self._reply_buf = bytearray()
        self._reply_fds = 0
        self._seq = 0
        self.stats = TraceStats()

    # -- the loop ------------------------------------------------------------

    def run(self) -> TraceStats:
        """Forward until the helper's side has closed; return what was seen.

        QEMU's closing is passed on and the helper's last replies still read;
        the helper's closing ends the run: nothing can be answered any more,
        and QEMU keeps its end open after the EOF (it marks the proxy dead).
        """
        sel = selectors.DefaultSelector()
        sel.register(self._client.transport.sock, selectors.EVENT_READ, self._from_client)
        sel.register(self._helper.transport.sock, selectors.EVENT_READ, self._from_helper)
        try:
            while self._helper.readable:
                for key, _ in sel.select():
                    handler: Callable[[], bool] = key.data
                    if not handler():
                        sel.unregister(key.fileobj)
        finally:
            sel.close()
            for pending in self._pending:
                self._emit(pending, None, 0, {"kind": "NoReply", "message": "no reply came"})
                self.stats.unanswered += 1
            self._pending.clear()
            self._client.transport.close()
            self._helper.transport.close()
        return self.stats

    def _send(self, to: _Side, data: bytes, fds: list[int]) -> None:
        """Forward ``data`` with ``fds`` riding on its first byte, then close our copies."""
        try:
            if to.writable:
                to.transport.send(data, fds, timeout=None)
        except ConnectionClosed:
            # The reader is gone; keep tracing what the other side still says.
            to.writable = False
        finally:
            close_fds(fds)

    def _eof(self, side: _Side, other: _Side) -> bool:
        side.readable = False
        # Pass the EOF on: the helper exits at EOF, and QEMU marks the proxy dead.
        with contextlib.suppress(OSError):
            other.transport.shutdown_write()
        other.writable = False
        return False

    def _from_client(self) -> bool:
        data, fds = self._client.recv(_CHUNK, self.stats)
        if not data:
            close_fds(fds)
            return self._eof(self._client, self._helper)
        self.stats.client_fds += len(fds)
        self._send(self._helper, data, fds)
        if not self._framing_lost:
            self._req_buf += data
            self._frame_requests()
        return True

    def _from_helper(self) -> bool:
        want = self._reply_wanted()
        data, fds = self._helper.recv(want or _CHUNK, self.stats)
        if not data:
            close_fds(fds)
            return self._eof(self._helper, self._client)
        nfds = len(fds)
        self._send(self._client, data, fds)
        if not want:
            self.stats.stray_bytes += len(data)
            self._emit_stray(data, nfds)
            return True
        self._reply_buf += data
        self._reply_fds += nfds
        if self._reply_wanted() == 0:
            self._finish_reply()
        return True

    # -- requests --------------------------------------------------------------

    def _frame_requests(self) -> None:
        buf = self._req_buf
        while len(buf) >= HEADER_SIZE:
            message_type, size = self._codecs.header_struct.unpack_from(buf, 0)
            try:
                mtype = check_request_header(message_type, size)
            except RemoteProtocolError as exc:
                # The helper disconnects on this; nothing after it can be framed.
                self._framing_lost = True
                self._write(
                    {
                        "seq": self._next_seq(),
                        "t": round(self._clock() - self._t0, 6),
                        "request": {"error": error_to_json(exc)},
                        "hex": {"request": bytes(buf[:HEADER_SIZE]).hex()},
                    }
                )
                self.stats.exchanges += 1
                self.stats.undecoded += 1
                buf.clear()
                return
            if request_bytes_missing(buf, byteorder=self.byteorder):
                return
            end = request_frame_length(buf, byteorder=self.byteorder)
            frame = bytes(buf[:end])
            del buf[:end]
            request: m.Request | None = None
            error: RemoteProtocolError | None = None
            try:
                request = decode_request(frame, byteorder=self.byteorder, lenient=self._lenient)
            except RemoteProtocolError as exc:
                error = exc
            self._pending.append(
                _Pending(self._next_seq(), mtype, frame, request, error, self._clock())
            )

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    # -- replies ---------------------------------------------------------------

    def _reply_wanted(self) -> int:
        """Bytes still missing from the oldest pending request's reply (0: none pending)."""
        if not self._pending:
            return 0
        # A man in the middle forwards a reply whole, whatever size it announces.
        missing = reply_bytes_missing(
            REPLY_KIND[self._pending[0].type],
            self._reply_buf,
            byteorder=self._codecs.byteorder,
            max_payload=0xFFFFFFFF,
        )
        return min(missing, _CHUNK)

    def _finish_reply(self) -> None:
        pending = self._pending.popleft()
        data = bytes(self._reply_buf)
        nfds = self._reply_fds
        self._reply_buf.clear()
        self._reply_fds = 0
        reply: m.Reply | None = None
        error: dict[str, Any] | None = None
        try:
            if pending.request is not None:
                # The descriptors were forwarded and closed already: stand-ins
                # keep the count, which is what the codec checks.
                reply = decode_reply(
                    pending.request,
                    data,
                    fds=[-1] * nfds,
                    byteorder=self.byteorder,
                    lenient=self._lenient,
                )
            else:
                reply = decode_error_reply(pending.type, data, byteorder=self.byteorder)
        except ProxyProtocolError as exc:
            error = error_to_json(exc)
        self._emit(pending, data, nfds, error, reply)

    # -- output ----------------------------------------------------------------

    def _emit(
        self,
        pending: _Pending,
        data: bytes | None,
        nfds: int,
        error: dict[str, Any] | None,
        reply: m.Reply | None = None,
    ) -> None:
        now = self._clock()
        record: dict[str, Any] = {"seq": pending.seq, "t": round(pending.t - self._t0, 6)}
        if data is not None:
            record["us"] = round((now - pending.t) * 1e6, 1)
        if pending.request is not None:
            record["request"] = request_to_json(pending.request)
        else:
            assert pending.error is not None
            record["request"] = {"error": error_to_json(pending.error)}
        record["reply"] = {"error": error} if reply is None else reply_to_json(reply)
        record["fds"] = nfds
        record["hex"] = {"request": pending.frame.hex()}
        if data is not None:
            record["hex"]["reply"] = data.hex()
        self.stats.exchanges += 1
        if pending.request is None or reply is None:
            self.stats.undecoded += 1
        self._write(record)

    def _emit_stray(self, data: bytes, nfds: int) -> None:
        self._write(
            {
                "t": round(self._clock() - self._t0, 6),
                "stray": {"kind": "UnexpectedReply", "bytes": data.hex(), "fds": nfds},
            }
        )

    def _write(self, record: dict[str, Any]) -> None:
        self._out.write(json.dumps(record) + "\n")
        self._out.flush()


# -- command line --------------------------------------------------------------


def _listen(path: str, uid: int | None, gid: int | None) -> socket.socket:
    """Bind ``path`` and accept one connection, as virtfs-proxy-helper ``-s`` does."""
    if os.path.lexists(path):
        raise SystemExit(f"trace: {path} already exists")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o007)  # srwxrwx---, like the helper's socket
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    bound = os.lstat(path)
    try:
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        listener.listen(1)
        with listener:
            conn, _ = listener.accept()
    except BaseException:
        # a failed chown, SIGTERM/SIGINT before QEMU came: no socket file left,
        # and none but ours removed (the name may have been swapped meanwhile)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (bound.st_dev, bound.st_ino):
                os.unlink(path)
        raise
    return conn


def _spawn_helper(argv: list[str]) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd = str(theirs.fileno())
    if any("{fd}" in a for a in argv):
        argv = [a.replace("{fd}", fd) for a in argv]
    else:
        argv = [*argv, "-f", fd]
    try:
        # stdout and stderr stay the terminal's: the helper talks to the user
        proc = start_process(argv, (theirs.fileno(),))
    except HelperStartError as exc:
        ours.close()
        raise SystemExit(f"trace: {exc}") from exc
    finally:
        theirs.close()
    return ours, proc


def _owner_id(value: str) -> int:
    """-u/-g: a uid_t/gid_t in decimal, or -1 (a larger number is no owner)."""
    if value.lstrip("-").isascii() and value.lstrip("-").isdigit():
        number = int(value, 10)
        if -1 <= number <= 0xFFFFFFFF:
            return number
    raise argparse.ArgumentTypeError(f"not a uid_t: {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto trace`` parser."""
    p = argparse.ArgumentParser(
        prog="virtfs-proto trace",
        description="Forward the proxy protocol between QEMU and a helper, logging JSON Lines.",
    )
    p.add_argument("-o", "--output", default="-", help="JSON Lines file (default: stdout)")
    side = p.add_mutually_exclusive_group(required=True)
    side.add_argument("--listen-fd", type=int, metavar="N", help="QEMU's side: an inherited socket")
    side.add_argument("--listen", metavar="PATH", help="QEMU's side: bind PATH, accept one")
    p.add_argument("-u", "--uid", type=_owner_id, help="owner of the --listen socket")
    p.add_argument("-g", "--gid", type=_owner_id, help="group of the --listen socket")
    p.add_argument("--connect", metavar="PATH", help="the helper's side: its named socket")
    p.add_argument("--byteorder", choices=["little", "big"], default=None)
    p.add_argument(
        "--lenient",
        action="store_true",
        help="accept bytes after a payload's last field, as QEMU's helper does",
    )
    p.add_argument("helper", nargs="*", help="helper command after --; gets -f N appended")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``virtfs-proto trace``."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    if bool(args.connect) == bool(args.helper):
        raise SystemExit("trace: give exactly one of --connect PATH or -- HELPER ARGS")
    if args.helper:
        try:
            check_helper_command(args.helper)
        except HelperStartError as exc:
            raise SystemExit(f"trace: {exc.one_line()}") from None
    if args.listen_fd is not None:
        try:
            client = socket.socket(fileno=args.listen_fd)
        except (OSError, ValueError, OverflowError) as exc:  # a negative number, a huge one
            why = exc.strerror if isinstance(exc, OSError) else "not a descriptor"
            raise SystemExit(f"trace: --listen-fd {args.listen_fd}: {why}") from None
        if client.family != socket.AF_UNIX or client.type != socket.SOCK_STREAM:
            raise SystemExit(f"trace: --listen-fd {args.listen_fd} is not an AF_UNIX stream socket")
    proc: subprocess.Popen[bytes] | None = None
    if args.helper:
        helper, proc = _spawn_helper(list(args.helper))
    else:
        helper = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            helper.connect(args.connect)
        except OSError as exc:
            raise SystemExit(f"trace: cannot connect to {args.connect}: {exc.strerror}") from exc
    if args.listen_fd is None:
        client = _listen(args.listen, args.uid, args.gid)
    out: TextIO
    with contextlib.ExitStack() as stack:
        if args.output == "-":
            out = sys.stdout
        else:
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        stats = Tracer(client, helper, out, byteorder=args.byteorder, lenient=args.lenient).run()
    rc = None
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        rc = stop_process_tree(proc)
    print(
        f"trace: {stats.exchanges} exchanges, {stats.undecoded} did not decode, "
        f"{stats.unanswered} unanswered, {stats.stray_bytes} stray reply bytes, "
        f"{stats.client_fds + stats.fds_dropped} descriptor anomalies"
        + ("" if rc is None else f"; helper exit status {rc}"),
        file=sys.stderr,
    )
    # a helper that failed (one that could not start, say) fails the trace too
    return 0 if stats.clean and not rc else 1
