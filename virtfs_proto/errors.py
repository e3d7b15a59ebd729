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


class NotAProxySocket(LocalProtocolError, TypeError):
    """A client or transport was given something other than an AF_UNIX stream socket."""


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


# -- I/O layers (transport, client, launcher) ---------------------------------


class TransportError(ProxyProtocolError):
    """The socket under a connection failed (a timeout, a local resource limit)."""


class TransportTimeout(TransportError):
    """No (complete) reply arrived within the timeout.

    The transport stays usable: what arrived is kept, and reading again
    resumes. A client that gives up on the reply must close the connection,
    since the late reply would otherwise answer its next request.
    """


class AncillaryTruncated(TransportError):
    """``recvmsg()`` set ``MSG_CTRUNC``: descriptors were sent that could not all be received.

    Either the peer passed more descriptors than any reply carries, or this
    process hit ``RLIMIT_NOFILE`` (QEMU reports the latter as ``ENFILE``).
    Every descriptor that did arrive has been closed; ``data`` holds the bytes
    that came with them (the stream itself is intact).
    """

    def __init__(self, message: str, *, data: bytes = b"", **where: int | None) -> None:
        super().__init__(message, **where)
        self.data = data


class HelperStartError(ProxyProtocolError):
    """A helper process exited (or never listened) instead of serving the connection."""

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        stderr: str = "",
        argv: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        #: the helper's exit status (negative: killed by that signal), None if still running
        self.returncode = returncode
        #: what the helper wrote to stderr before failing
        self.stderr = stderr
        #: the command line that was run
        self.argv = argv

    def __str__(self) -> str:
        text = super().__str__()
        if self.returncode is not None:
            text += f" [exit status {self.returncode}]"
        if self.stderr.strip():
            text += f"; stderr: {self.stderr.strip()}"
        return text

    def one_line(self) -> str:
        """The message, the exit status and the last line the helper wrote, on one line."""
        text = super().__str__()
        if self.returncode is not None:
            text += f" [exit status {self.returncode}]"
        last = self.stderr.strip().splitlines()
        if last:
            text += f"; it said: {last[-1].strip()}"
        return text
