"""The floor of a round trip in Python: a "helper" that answers without doing anything.

Not a test, not a helper: run by ``bench_syscalls.py --split`` beside the two
real helpers, with the same command line (``-p EXPORT -f FD -n``), to show
what no change to our operations can save.

* ``--floor=bare``: ``recv_into`` a preallocated buffer, unpack each frame's
  header, and answer it with a reply canned per request type: ``sendall``,
  or ``sendmsg`` with one held fd for T_OPEN/T_CREATE. The least an
  interpreter does per request; the framing is the helper's, for whole
  frames (the client sends one request at a time).
* ``--floor=serve``: the helper's own loop (:func:`~virtfs_proto.server.main.serve`,
  with the generated decoders) and an answerer that returns the canned reply:
  the loop's decode and dispatch, no operation (a passed fd is a ``dup`` of
  the held one, which the loop closes once sent: two calls more than bare).

Each canned reply is what our :class:`~virtfs_proto.server.ops.Operations`
answers to the first request of its type (made once, before the client's
timed runs), so the bytes on the wire are the real ones. No sandbox: the
floor's kernel time is the socket's alone, without seccomp's filter.
"""

from __future__ import annotations

import getopt
import os
import socket
import sys
from typing import Any

from virtfs_proto import _fastpath_generated as wire
from virtfs_proto.constants import HEADER_SIZE
from virtfs_proto.server.main import RECV_BUFFER_SIZE, Log, serve
from virtfs_proto.server.ops import FD_VALID, Answer, Operations
from virtfs_proto.server.resolve import Resolver

_FD = wire.FD_REPLY


class Canned:
    """The reply to each request type, made by the real operations once."""

    def __init__(self, export: str) -> None:
        root = os.open(export, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.ops = Operations(Resolver(root), get_version=False, log=print)
        self.replies: dict[int, bytes | int] = {}

    def __call__(self, message_type: int, values: tuple[Any, ...]) -> Answer:
        """The canned reply; an fd is a copy (the serving loop closes what it passes)."""
        reply = self.first(message_type, values)
        return os.dup(reply) if isinstance(reply, int) else reply

    def first(self, message_type: int, values: tuple[Any, ...]) -> Answer:
        reply = self.replies.get(message_type)
        if reply is None:
            # held for good: every T_OPEN/T_CREATE reply passes this one fd
            reply = self.replies[message_type] = self.ops.answer(message_type, values)
        return reply


def bare(sock: socket.socket, canned: Canned) -> int:
    """recv_into, frame, canned reply: nothing else per request.

    Whole frames only: the benchmark's client sends one request at a time,
    so a read never ends inside one; the helper's carry-over of a cut frame
    is left out (a floor may do less, never more).
    """
    replies = canned.replies
    chunk = bytearray(RECV_BUFFER_SIZE)
    while n := sock.recv_into(chunk):
        start = 0
        while start < n:
            message_type, size = wire.HEADER.unpack_from(chunk, start)
            payload, start = start + HEADER_SIZE, start + HEADER_SIZE + size
            if start > n:
                raise RuntimeError("a request cut short: the floor takes whole frames only")
            reply = replies.get(message_type)
            if reply is None:  # the first of its type: the real answer, once
                decode = wire.REQUEST_DECODERS[message_type]
                reply = canned.first(message_type, decode(chunk, payload, start, True))  # type: ignore[arg-type]
            if isinstance(reply, int):
                sock.sendmsg((FD_VALID,), [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(reply))])
            else:
                sock.sendall(reply)
    return 0


def main(argv: list[str]) -> int:
    opts, _ = getopt.getopt(argv, "p:f:n", ["floor="])
    given = dict(opts)
    canned = Canned(given["-p"])
    sock = socket.socket(fileno=int(given["-f"]))
    if given.get("--floor", "bare") == "bare":
        return bare(sock, canned)
    return serve(sock, canned, Log())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
