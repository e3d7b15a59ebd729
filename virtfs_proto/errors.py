"""One error hierarchy for everything the codec and its I/O layers raise.

As in h11: :class:`LocalProtocolError` means *you* misused the API (a value
that does not fit its field, a reply with no request to answer);
:class:`RemoteProtocolError` means the *peer* sent something the protocol does
not allow. A decoder given arbitrary bytes returns messages or raises
:class:`RemoteProtocolError`, never anything else.
"""

from __future__ import annotations

from .constants import MessageType


def _type_name(message_type: int | None) -> str | None:
    if message_type is None:
        return None
    try:
        return MessageType(message_type).name
    except ValueError:
        return str(message_type)


class ProxyProtocolError(Exception):
    """Root of every protocol error; carries where it happened when known."""

    def __init__(
        self,
        message: str,
        *,
        message_type: int | None = None,
        size: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: the header's ``type`` of the frame concerned, if any
        self.message_type = message_type
        #: the header's ``size`` (payload length) of the frame concerned, if any
        self.size = size
        #: byte offset into the payload where decoding failed, if known
        self.offset = offset

    @property
    def kind(self) -> str:
        """A stable name for the error's class, used in JSON output."""
        return type(self).__name__

    def __str__(self) -> str:
        where = []
        if self.message_type is not None:
            where.append(f"type={_type_name(self.message_type)}")
        if self.size is not None:
            where.append(f"size={self.size}")
        if self.offset is not None:
            where.append(f"offset={self.offset}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class LocalProtocolError(ProxyProtocolError):
    """The caller asked for something the protocol cannot express."""


class RemoteProtocolError(ProxyProtocolError):
    """The peer sent bytes (or fds) the protocol does not allow."""


class UnknownMessageType(RemoteProtocolError):
    """A header's type is not a request (or reply) code. Fatal for the connection."""


class FrameTooLarge(RemoteProtocolError):
    """A header announced more than ``PROXY_MAX_IO_SZ`` payload bytes. Fatal."""


class TruncatedPayload(RemoteProtocolError):
    """The payload ends before the fields its type requires (QEMU answers ``-ENOBUFS``)."""


class TrailingBytes(RemoteProtocolError):
    """The payload is longer than its fields (QEMU ignores the rest; strict decoding refuses)."""


class UnexpectedReply(RemoteProtocolError):
    """A reply that cannot answer the outstanding request (bad type, size or status)."""


class BadFdCount(RemoteProtocolError):
    """A reply came with the wrong number of passed file descriptors.

    Not fatal: the reply was consumed and the connection stays in step. The
    caller owns ``fds`` (descriptors that arrived but were not delivered) and
    must close them.
    """

    def __init__(self, message: str, *, fds: tuple[int, ...] = (), **where: int | None) -> None:
        super().__init__(message, **where)
        self.fds = fds


class ConnectionClosed(RemoteProtocolError):
    """The peer closed the connection mid-frame or with requests unanswered."""
