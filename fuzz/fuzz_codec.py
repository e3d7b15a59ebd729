"""atheris harness for the codec: any bytes either decode or raise RemoteProtocolError.

Checked for every input:

* ``decode_request`` (strict and lenient) returns a request or raises
  :class:`~virtfs_proto.errors.RemoteProtocolError`, never anything else; a
  strict decode re-encodes to exactly the input;
* a :class:`~virtfs_proto.connection.ServerConnection` fed the bytes in
  arbitrary chunks yields requests / malformed requests (each answered) or
  raises RemoteProtocolError;
* a :class:`~virtfs_proto.connection.ClientConnection` with an outstanding
  request of a fuzzer-chosen type, fed the bytes as replies (with fake
  descriptors), yields replies or raises RemoteProtocolError; so does
  ``decode_reply``, and a strictly decoded reply re-encodes to the input.

Run: see fuzz/README.md.
"""

from __future__ import annotations

import atheris
from seeds import main, vectors

with atheris.instrument_imports():
    from virtfs_proto import messages as m
    from virtfs_proto.codec import decode_reply, decode_request, encode_reply, encode_request
    from virtfs_proto.connection import (
        NEED_DATA,
        ClientConnection,
        ConnectionState,
        MalformedRequest,
        ReplyReceived,
        ServerConnection,
    )
    from virtfs_proto.constants import REPLY_KIND, REQUEST_TYPES, ReplyKind
    from virtfs_proto.errors import RemoteProtocolError

#: one request of each type, to set up the client side (xattr ones with size 0 and > 0)
SAMPLES: list[m.Request] = [
    m.OpenRequest(b"/f\0", 0),
    m.CreateRequest(b"//f", 0o102, 0o644, 0, 0),
    m.MknodRequest(0, 0, b"//f", 0o10644, 0),
    m.MkdirRequest(0, 0, b"//d", 0o755),
    m.SymlinkRequest(0, 0, b"t", b"//l"),
    m.LinkRequest(b"/a\0", b"//b"),
    m.LstatRequest(b"/\0"),
    m.ReadlinkRequest(b"/l\0", 4096),
    m.StatfsRequest(b"/\0"),
    m.ChmodRequest(b"/f\0", 0o600),
    m.ChownRequest(b"/f\0", 0, 0),
    m.TruncateRequest(b"/f\0", 0),
    m.UtimeRequest(b"/f\0", 0, 0, 0, 0),
    m.RenameRequest(b"//a", b"//b"),
    m.RemoveRequest(b"//a"),
    m.LgetxattrRequest(0, b"/f\0", b"user.a"),
    m.LgetxattrRequest(100, b"/f\0", b"user.a"),
    m.LlistxattrRequest(0, b"/f\0"),
    m.LlistxattrRequest(100, b"/f\0"),
    m.LsetxattrRequest(b"/f\0", b"user.a", b"v", 1, 0),
    m.LremovexattrRequest(b"/f\0", b"user.a"),
    m.GetversionRequest(b"/f\0"),
]
assert {r.TYPE for r in SAMPLES} == set(REQUEST_TYPES)


def _requests(data: bytes, lenient: bool) -> None:
    try:
        request = decode_request(data, lenient=lenient)
    except RemoteProtocolError:
        return
    if not lenient and encode_request(request) != data:
        raise AssertionError(f"strict decode does not round-trip: {data.hex()}")


def _server_stream(data: bytes, cuts: list[int]) -> None:
    conn = ServerConnection(lenient=bool(cuts) and cuts[0] % 2 == 0)
    pieces, start = [], 0
    for c in sorted(cuts):
        pieces.append(data[start:c])
        start = c
    pieces.append(data[start:])
    try:
        for piece in pieces:
            conn.receive_data(piece)
            for _ in range(len(data) + 1):  # bounded: each event consumes >= 8 bytes
                ev = conn.next_event()
                if ev is NEED_DATA or ev is ConnectionState.CLOSED:
                    break
                if isinstance(ev, MalformedRequest):
                    conn.send_reply(m.ErrorReply(105))
                else:
                    conn.send_reply(m.ErrorReply(5))
        conn.receive_eof()
        conn.next_event()
    except RemoteProtocolError:
        pass


def _client_stream(request: m.Request, data: bytes, nfds: int, chunk: int) -> None:
    conn = ClientConnection()
    for _ in range(3):
        conn.send_request(request)
    fake = iter(range(1000, 1000 + 64))
    try:
        for i in range(0, len(data), chunk):
            fds = [next(fake) for _ in range(nfds)] if i == 0 else []
            conn.receive_data(data[i : i + chunk], fds)
            while True:
                ev = conn.next_event()
                if not isinstance(ev, ReplyReceived):
                    break
        conn.receive_eof()
        conn.next_event()
    except RemoteProtocolError:
        pass


def _reply(request: m.Request, data: bytes, nfds: int) -> None:
    fds = list(range(2000, 2000 + nfds))
    try:
        reply = decode_reply(request, data, fds=fds)
    except RemoteProtocolError:
        return
    if REPLY_KIND[request.TYPE] is not ReplyKind.FD and encode_reply(request, reply) != data:
        raise AssertionError(f"reply does not round-trip: {request!r} {data.hex()}")


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    which = fdp.ConsumeIntInRange(0, len(SAMPLES) - 1)
    nfds = fdp.ConsumeIntInRange(0, 2)
    chunk = fdp.ConsumeIntInRange(1, 64)
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [c % (len(data) + 1) for c in cuts]
    _requests(data, lenient=False)
    _requests(data, lenient=True)
    _server_stream(data, cuts)
    _client_stream(SAMPLES[which], data, nfds, chunk)
    _reply(SAMPLES[which], data, nfds)


def seeds() -> dict[str, bytes]:
    """Every golden vector's request and reply bytes, after the four control bytes
    (sample, fds, chunk, cuts) that test_one_input consumes first."""
    return {
        f"{name}-{i}-{key}": b"\0\0\x08\0" + bytes.fromhex(ex[key])
        for name, exchanges in vectors()
        for i, ex in enumerate(exchanges)
        for key in ("request", "reply")
        if ex.get(key)
    }


if __name__ == "__main__":
    main(test_one_input, seeds)
