"""Raw reads for checking a helper: a reply as the bytes and descriptors that came,
without the codec, so that a suite can send malformed traffic and see exactly what
comes back (the vector runner records these).

They read through a :class:`~virtfs_proto.transport.Transport` (its deadlines and
``recvmsg()``); the framing is the codec's :func:`~virtfs_proto.codec.reply_bytes_missing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..codec import reply_bytes_missing
from ..constants import (
    HOST_BYTE_ORDER,
    PROXY_MAX_IO_SZ,
    REPLY_KIND,
    ByteOrder,
    MessageType,
    ReplyKind,
)
from ..transport import DEFAULT_TIMEOUT, Timeout, Transport, close_fds


@dataclass(slots=True)
class RawReply:
    """Bytes and descriptors read for one reply, without decoding them.

    ``complete`` is False when the peer closed the connection (``eof``) before
    the whole reply arrived; ``data`` then holds what did arrive.
    """

    data: bytes
    fds: list[int] = field(default_factory=list)
    eof: bool = False
    #: MSG_CTRUNC was set on some read: descriptors were lost (and those that
    #: arrived are still in ``fds``, for the caller to close)
    fds_truncated: bool = False

    @property
    def complete(self) -> bool:
        """Whether the whole reply (as announced by its shape) arrived."""
        return not self.eof

    def close_fds(self) -> None:
        """Close the received descriptors (and forget them)."""
        close_fds(self.fds)
        self.fds = []


def recv_exact(transport: Transport, n: int, *, timeout: Timeout = DEFAULT_TIMEOUT) -> RawReply:
    """Read exactly ``n`` bytes (fewer only at EOF), keeping every descriptor."""
    return _read_raw(transport, n, transport.deadline(timeout), RawReply(b""))


def _read_raw(transport: Transport, n: int, deadline: float | None, into: RawReply) -> RawReply:
    chunks = [into.data]
    have = len(into.data)
    goal = have + n
    try:
        while have < goal:
            data, fds, truncated = transport.recvmsg(goal - have, deadline)
            into.fds.extend(fds)
            into.fds_truncated |= truncated
            if not data:
                into.eof = True
                break
            chunks.append(data)
            have += len(data)
    except BaseException:
        # Descriptors gathered so far would leak with the exception.
        into.close_fds()
        raise
    into.data = b"".join(chunks)
    return into


def recv_reply_raw(
    transport: Transport,
    kind: ReplyKind | MessageType,
    *,
    timeout: Timeout = DEFAULT_TIMEOUT,
    byteorder: ByteOrder = HOST_BYTE_ORDER,
    max_payload: int = PROXY_MAX_IO_SZ,
) -> RawReply:
    """Read one reply of the given shape (or the shape answering a request type), raw.

    An FD reply is exactly 4 bytes; a STATUS or RESPONSE reply is the
    8-byte header and then the ``size`` it announces (at most
    ``max_payload`` of it is read, so a hostile size cannot make us wait
    for or buffer gigabytes: the rest stays unread on the socket). EOF is
    reported in the result (``eof``, ``complete``), not raised; a timeout
    raises :class:`TransportTimeout`. The caller owns (closes) ``fds``.
    """
    if isinstance(kind, MessageType):
        kind = REPLY_KIND[kind]
    deadline = transport.deadline(timeout)
    reply = RawReply(b"")
    while not reply.eof and (
        missing := reply_bytes_missing(
            kind, reply.data, byteorder=byteorder, max_payload=max_payload
        )
    ):
        _read_raw(transport, missing, deadline, reply)
    return reply


def read_until_eof(
    transport: Transport, *, timeout: Timeout = DEFAULT_TIMEOUT, limit: int = 1 << 20
) -> RawReply:
    """Read everything until the peer closes (at most ``limit`` bytes).

    For checking that a helper disconnects (and says nothing) after a
    fatal request. Raises :class:`TransportTimeout` if it stays open.
    """
    deadline = transport.deadline(timeout)
    reply = RawReply(b"")
    while not reply.eof and len(reply.data) < limit:
        _read_raw(transport, min(65536, limit - len(reply.data)), deadline, reply)
    return reply
