"""``virtfs-proto helper``: QEMU's virtfs-proxy-helper command line, hardened.

Options, validation and messages are those of QEMU 7.2's helper; unlike it,
every failure exits non-zero:

* 255: no ``-p`` or neither ``-s`` nor ``-f`` (as QEMU);
* 1: any other bad option or set-up failure (QEMU exits 0 for most of these,
  e.g. an unusable ``-f`` fd or a ``-s`` socket that cannot be created), and
  a peer that sent fatal garbage (unknown type, frame over 64 KiB), which
  QEMU also answers by closing the connection, but with status 0;
* 0: the client closed the connection (EOF, or a write to a peer that has
  gone: EPIPE is not fatal, SIGPIPE is ignored).

Extra long options, not in QEMU's helper:

``--user NAME|UID``, ``--group NAME|GID``
    who the helper becomes after entering the jail (default ``nobody`` and
    its primary group); never root. Numbers need no passwd entry (one uid
    per VM); a numeric ``--user`` without ``--group`` uses the same number
    as the gid.
``--print-confinement``
    confine exactly as for serving (in the serving process: the process
    model), print the confinement read back from /proc (every thread's
    uid, gid, capability sets, no_new_privs, root; the namespaces compared
    with the parent's; the mount flags of the export's view), exit 0.
    ``-f``/``-s`` are not needed with it.
``--allow-device-nodes``
    keep CAP_MKNOD and let T_MKNOD make character and block devices (for
    uid == gid == 0 only, as QEMU's helper). Without it device nodes are
    refused with EPERM. With ``--sandbox=chroot`` a risk: QEMU can open any
    host device through a node made this way and a directory fd the helper
    handed it (the default sandbox's ``nodev`` view refuses that).
``--sandbox=namespace|chroot|none``
    how the serving process is contained (:mod:`.sandbox`); default
    ``namespace``. ``none`` is for tests only. A sandbox that cannot be
    built is an error (exit 1), never a fallback.

``--rootless``
    run without root, in a user namespace of the helper's own
    (:mod:`.userns`): the same sandbox inside, capabilities over that
    namespace only. Chosen automatically when the real uid is not 0 (never
    as root: ``--rootless`` as root is refused); the start-up log and
    ``--print-confinement`` say which mode is in effect and why. A user
    namespace that cannot be made or mapped is an error (exit 1), never a
    fallback. The helper stays the invoking user (``--user``/``--group``
    are refused), and ``--allow-device-nodes`` is refused (there is no
    CAP_MKNOD in the initial user namespace to keep).
``--uid-map INSIDE:OUTSIDE:COUNT``, ``--gid-map INSIDE:OUTSIDE:COUNT``
    rootless only, repeatable: the namespace's maps, written by
    ``newuidmap``/``newgidmap`` (Debian's ``uidmap``) within what
    ``/etc/subuid``/``/etc/subgid`` grant; the invoking id must be mapped (it
    is the helper's own). Without them only the invoking uid and gid are
    mapped, each to itself. A request naming an unmapped id gets EPERM.
``--subids``
    rootless only: inside 0 is the invoking uid/gid and inside 1.. the
    user's ranges of ``/etc/subuid``/``/etc/subgid`` (podman's maps),
    so the helper's own inside uid is 0 (the invoking user outside).
``--allow-setid``
    rootless only: keep S_ISUID/S_ISGID that requests set (creation, chmod);
    by default they are cleared (a user cannot mount their files nosuid).

Test-only options (they weaken the helper; each exists so one layer can be
tested without the others): ``--test-disable=LAYER[,LAYER]`` (layers
:data:`.sandbox.LAYERS`: namespaces, chroot, drop, landlock, seccomp),
``--resolver=openat2|walk|none`` (``walk`` forces the user-space fallback of
the resolver, ``none`` turns it off), and ``--test-inside=ACTION[,ACTION]``
(:mod:`.inside`; refused unless ``VIRTFS_PROTO_TESTING=1``).
"""

from __future__ import annotations

import contextlib
import getopt
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable
from errno import EADDRINUSE, ENOBUFS

from .. import _fastpath_generated as wire
from .. import phase, procfs
from .._record import Record
from ..constants import HEADER_SIZE, PROXY_MAX_IO_SZ
from . import landlock, privileges, sandbox, seccomp, userns
from .ops import FD_VALID, Answer, Operations, error_frame, export_supports_getversion
from .oslib import fchown_fd, open_own_fd_dir, open_procfs
from .resolve import Resolver
from .sandbox import LAYERS, SANDBOXES, Layers, SandboxError
from .userns import IdMaps, IdRange, UserNamespaceError

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    from typing import Any, Final

PROG: Final = "virtfs-proxy-helper"

USAGE: Final = (
    f"usage: {PROG}\n"
    " -p|--path <path> 9p path to export\n"
    " {-f|--fd <socket-descriptor>} socket file descriptor to be used\n"
    " {-s|--socket <socketname> socket file used for communication\n"
    " \t-u|--uid <uid> -g|--gid <gid>} - uid:gid combination to give "
    " access to this socket\n"
    " \tNote: -s & -f can not be used together\n"
    " [-n|--nodaemon] Run as a normal program\n"
)
EXTRA_USAGE: Final = (
    " [--user <user>] [--group <group>] who to run as (default: nobody)\n"
    " [--print-confinement] confine, print uid/gid/capabilities of every thread, exit\n"
    " [--allow-device-nodes] let T_MKNOD make device nodes (keeps CAP_MKNOD; a risk)\n"
    " [--sandbox=namespace|chroot|none] how to contain the helper (default: namespace)\n"
    " [--rootless] run in a user namespace, without root (default when not root)\n"
    " [--uid-map|--gid-map <inside:outside:count>]... [--subids] rootless id maps\n"
    " [--allow-setid] rootless: keep set-uid/set-gid bits a guest asks for\n"
)

EXIT_USAGE: Final = 255
EXIT_FAILURE: Final = 1

SHORT_OPTIONS: Final = "p:nh?f:s:u:g:"
LONG_OPTIONS: Final = [
    "path=",
    "fd=",
    "socket=",
    "uid=",
    "gid=",
    "nodaemon",
    "help",
    "user=",
    "group=",
    "print-confinement",
    "allow-device-nodes",
    "sandbox=",
    "test-disable=",
    "resolver=",
    "test-inside=",
    "rootless",
    "uid-map=",
    "gid-map=",
    "subids",
    "allow-setid",
]

#: ``--test-inside`` is refused unless this is set to 1 in the environment.
TESTING_ENV: Final = "VIRTFS_PROTO_TESTING"

#: one descriptor as SCM_RIGHTS data (a C int)
_FD: Final = struct.Struct("i")

#: Big enough for the largest frame, so one recv() can hold a whole request.
RECV_BUFFER_SIZE: Final = 2 * (8 + 65536)

UNIX_PATH_MAX: Final = 108


class UsageError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILURE, usage: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.usage = usage


class Options:
    """The parsed command line (class attributes are the defaults)."""

    path: str | None = None
    fd: int | None = None
    socket: str | None = None
    uid: int | None = None
    gid: int | None = None
    nodaemon: bool = False
    user: str | None = None
    group: str | None = None
    print_confinement: bool = False
    allow_device_nodes: bool = False
    sandbox: str = "namespace"
    test_disable: frozenset[str] = frozenset()
    resolver: str = "openat2"
    test_inside: tuple[str, ...] = ()
    rootless: bool = False
    uid_map: tuple[IdRange, ...] = ()
    gid_map: tuple[IdRange, ...] = ()
    subids: bool = False
    allow_setid: bool = False


#: the largest uid_t/gid_t (-1, its all-ones value, means "unchanged")
_ID_MAX: Final = 0xFFFFFFFF


def _atoi(value: str, what: str, low: int, high: int) -> int:
    """A decimal number in [low, high]: ASCII digits only (int() takes other
    scripts' digits, '_' and blanks), and nothing a C type would wrap (a uid
    of 2**32 + N was uid N)."""
    digits = value[1:] if value.startswith("-") else value
    if not (digits.isascii() and digits.isdigit()) or not low <= int(value, 10) <= high:
        raise UsageError(f"invalid {what} {value!r}", usage=False)
    return int(value, 10)


def parse_args(argv: list[str]) -> Options:
    try:
        pairs, _ = getopt.gnu_getopt(argv, SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as exc:
        # getopt_long's wording, not Python's
        what = (
            f"invalid option -- '{exc.opt}'"
            if len(exc.opt) == 1
            else f"unrecognized option '--{exc.opt}'"
        )
        if "requires argument" in exc.msg:
            what = f"option requires an argument -- '{exc.opt}'"
        raise UsageError(f"virtfs-proto helper: {what}") from None
    o = Options()
    for opt, val in pairs:
        if opt in ("-p", "--path"):
            o.path = val
        elif opt in ("-f", "--fd"):
            o.fd = _atoi(val, "socket descriptor", -(2**31), 2**31 - 1)
        elif opt in ("-s", "--socket"):
            o.socket = val
        elif opt in ("-u", "--uid"):
            o.uid = _atoi(val, "uid", -1, _ID_MAX)
        elif opt in ("-g", "--gid"):
            o.gid = _atoi(val, "gid", -1, _ID_MAX)
        elif opt in ("-n", "--nodaemon"):
            o.nodaemon = True
        elif opt in ("-h", "-?", "--help"):
            raise UsageError("", EXIT_FAILURE)
        elif opt == "--user":
            o.user = val
        elif opt == "--group":
            o.group = val
        elif opt == "--print-confinement":
            o.print_confinement = True
        elif opt == "--allow-device-nodes":
            o.allow_device_nodes = True
        elif opt == "--sandbox":
            if val not in SANDBOXES:
                raise UsageError(f"--sandbox must be namespace, chroot or none, not {val!r}")
            o.sandbox = val
        elif opt == "--test-disable":
            layers = frozenset(filter(None, val.split(",")))
            if not layers <= set(LAYERS):
                raise UsageError(
                    f"--test-disable takes layers among {', '.join(LAYERS)}, not {val!r}"
                )
            o.test_disable |= layers
        elif opt == "--test-inside":
            if os.environ.get(TESTING_ENV) != "1":
                raise UsageError(f"--test-inside is for tests only: it needs {TESTING_ENV}=1")
            o.test_inside = tuple(filter(None, val.split(",")))
        elif opt == "--rootless":
            o.rootless = True
        elif opt in ("--uid-map", "--gid-map"):
            try:
                ids = IdRange.parse_option(val, opt)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if opt == "--uid-map":
                o.uid_map += (ids,)
            else:
                o.gid_map += (ids,)
        elif opt == "--subids":
            o.subids = True
        elif opt == "--allow-setid":
            o.allow_setid = True
        elif opt == "--resolver":
            if val not in ("openat2", "walk", "none"):
                raise UsageError(f"--resolver must be openat2, walk or none, not {val!r}")
            o.resolver = val
    # QEMU's checks, in QEMU's order and words
    without_client = o.print_confinement or bool(o.test_inside)
    if (o.socket is None and o.fd is None and not without_client) or o.path is None:
        raise UsageError("socket, socket descriptor or path not specified", EXIT_USAGE)
    if o.socket is not None and o.fd is not None:
        raise UsageError("both named socket and socket descriptor specified")
    if o.socket is not None and (o.uid is None or o.gid is None):
        raise UsageError(
            "owner uid:gid not specified, owner uid:gid specifies who can access the socket file"
        )
    try:
        st = os.lstat(o.path)
    except OSError as exc:
        raise UsageError(
            f'invalid path "{o.path}" specified, {os.strerror(exc.errno or 0)}', usage=False
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f'specified path "{o.path}" is not directory', usage=False)
    _check_mode_options(o)
    return o


def rootless_mode(o: Options) -> tuple[bool, str]:
    """Whether the helper runs rootless, and why (for the log and the report)."""
    if o.rootless:
        return True, "--rootless"
    uid = os.getuid()
    if uid != 0:
        return True, f"real uid {uid} is not 0"
    return False, "real uid 0"


def _check_mode_options(o: Options) -> None:
    """The options that belong to one mode only."""
    rootless, _ = rootless_mode(o)
    if o.rootless and os.getuid() == 0:
        raise UsageError(
            "--rootless: start the helper as the user it should act as, not as root", usage=False
        )
    if rootless:
        refused = [
            (o.user is not None or o.group is not None, "--user/--group: a rootless helper"
             " stays the invoking user"),
            (o.allow_device_nodes, "--allow-device-nodes: a rootless helper has no CAP_MKNOD"
             " in the initial user namespace to keep"),
            (o.subids and bool(o.uid_map or o.gid_map), "--subids and --uid-map/--gid-map"
             " exclude each other"),
        ]  # fmt: skip
    else:
        refused = [
            (bool(o.uid_map or o.gid_map) or o.subids or o.allow_setid,
             "--uid-map, --gid-map, --subids and --allow-setid are for a rootless helper"),
        ]  # fmt: skip
    for wrong, message in refused:
        if wrong:
            raise UsageError(message, usage=False)


#: syslog(3)'s priorities (<syslog.h>): the module itself is imported only
#: by a helper that daemonises, which alone logs there
LOG_ERR: Final = 3
LOG_WARNING: Final = 4
LOG_INFO: Final = 6


class Log:
    """stderr with ``-n``, syslog (connected before the chroot) otherwise."""

    def __init__(self) -> None:
        self.syslog: Callable[[int, str], None] | None = None

    def open_syslog(self) -> None:
        import syslog

        syslog.openlog(PROG, syslog.LOG_PID | syslog.LOG_NDELAY, syslog.LOG_DAEMON)
        self.syslog = syslog.syslog

    def __call__(self, message: str, priority: int = LOG_INFO) -> None:
        if self.syslog is not None:
            self.syslog(priority, message)
        else:
            print(message, file=sys.stderr, flush=True)

    def error(self, message: str) -> None:
        self(message, LOG_ERR)


def daemonize() -> None:
    """daemon(0, 0): background, new session, cwd /, stdio on /dev/null."""
    if os.fork():
        os._exit(0)
    os.setsid()
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def peer_allowed(peer: tuple[int, int, int], uid: int, gid: int) -> bool:
    """Whether a peer's ``(pid, uid, gid)`` (SO_PEERCRED) may use a socket made for uid:gid.

    The socket file's owner and mode 0770 already keep others out; this is
    the second check the spec asks for, for peers that got past the file's
    permissions some other way (CAP_DAC_OVERRIDE, an fd passed around).
    """
    _, peer_uid, peer_gid = peer
    return peer_uid in (0, uid) or peer_gid == gid


_UCRED: Final = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


class SocketTampered(OSError):
    """The socket file could not be proved to be the one the helper bound."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(
            f"socket file {path} was tampered with ({why}): refusing to give it an owner"
        )


def proxy_socket(
    path: str, uid: int, gid: int, log: Callable[[str], None] = lambda _: None
) -> socket.socket:
    """QEMU's proxy_socket(): bind, chown, listen, accept exactly one client.

    Unlike QEMU's, whoever can write the socket's directory (normally the
    ``-u`` user) cannot get another file chowned by swapping the name: the
    directory is opened once and every later step goes through that fd, and
    the chown acts on a held fd proved to be the bound socket
    (:func:`_chown_bound_socket`), never on a name. And the one client must
    be root or carry the socket's uid or gid (SO_PEERCRED); another peer is
    told nothing, hung up on and logged.
    """
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):  # bind("") would autobind an abstract address
        raise OSError(f"not a socket file name: {path}")
    try:
        # Followed like any path the administrator gives (QEMU's bind does);
        # from here on the directory is this fd, whatever its name comes to mean.
        dirfd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(f"socket directory {parent or '.'}: {exc.strerror}") from None
    try:
        try:
            os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            raise OSError(f"socket already exists: {path}")
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise OSError(f"UNIX domain socket path exceeds {UNIX_PATH_MAX} characters")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _bind_in(listener, dirfd, name, path)
            bound = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            try:
                listener.listen(1)
                early = _chown_bound_socket(listener, dirfd, name, path, uid, gid)
                return _accept_one(listener, early, uid, gid, log)
            except BaseException:
                # SIGTERM/SIGINT (raised by the command line) or a failure before
                # a client came: leave no socket file behind. Once a client is
                # connected, the file is the client's to unlink (QEMU does).
                _unlink_if_ours(dirfd, name, bound)
                raise
        finally:
            listener.close()
    finally:
        os.close(dirfd)


def _unlink_if_ours(dirfd: int, name: str, bound: os.stat_result) -> None:
    """Remove ``name`` from ``dirfd`` if it is still the socket we bound there."""
    with contextlib.suppress(OSError):
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (bound.st_dev, bound.st_ino):
            os.unlink(name, dir_fd=dirfd)


def _bind_in(listener: socket.socket, dirfd: int, name: str, path: str) -> None:
    """bind ``listener`` to ``name`` in the directory ``dirfd``, mode 0770.

    AF_UNIX has no bindat(): the bare name is bound from inside the directory
    (a single component, so no other directory is looked up).
    """
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    old_umask = os.umask(0o7)
    try:
        os.fchdir(dirfd)
        listener.bind(name)
    except OSError as exc:
        if exc.errno == EADDRINUSE:  # created since we looked
            raise OSError(f"socket already exists: {path}") from None
        raise OSError(f"bind: {exc.strerror}: {path}") from None
    finally:
        os.umask(old_umask)
        os.fchdir(cwd)
        os.close(cwd)


def _chown_bound_socket(
    listener: socket.socket, dirfd: int, name: str, path: str, uid: int, gid: int
) -> list[socket.socket]:
    """Give the socket file ``listener`` is bound to the owner uid:gid.

    The directory is writable by others, so ``name`` may be swapped at any
    instant. The file is held as an O_PATH fd opened without following a
    symlink; a probe connected through that fd's ``/proc/self/fd`` link
    must arrive at ``listener`` (nothing but the bound socket's own file
    leads there), and only then is the held file chowned
    (``fchownat(fd, "", AT_EMPTY_PATH)``: no name is looked up again).
    Returns the connections that reached ``listener`` before the probe,
    in order (only root can make them: until the chown the file is root's).
    """
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise SocketTampered(path, f"gone: {exc.strerror}") from None
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise SocketTampered(path, "no longer a socket")
        early = _accept_probe(listener, f"/proc/self/fd/{fd}")
        if early is None:
            raise SocketTampered(path, "a different socket")
        try:
            fchown_fd(fd, uid, gid)
        except OSError as exc:
            for conn in early:
                conn.close()
            raise OSError(exc.errno, f"chown: {exc.strerror}: {path}") from None
        return early
    finally:
        os.close(fd)


def _accept_probe(listener: socket.socket, target: str) -> list[socket.socket] | None:
    """Connect a probe to ``target``; the connections ``listener`` had queued
    before the probe, or None if the probe did not arrive at ``listener``."""
    early: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.bind(b"")  # autobind: a unique abstract address tells the probe apart
        probe.setblocking(False)
        listener.setblocking(False)
        try:
            connected = False
            for _ in range(2):
                try:
                    probe.connect(target)
                    connected = True
                    break
                except FileNotFoundError:  # the fd is held: only a missing /proc says so
                    raise OSError(f"cannot connect through {target}: is /proc mounted?") from None
                except BlockingIOError:
                    # the backlog is full of early clients (root's, the file is
                    # still root's): take them off the queue, then probe again
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        conn.setblocking(True)
                        early.append(conn)
                except OSError:  # not listening, another socket type
                    break
            if not connected:
                _close_all(early)
                return None
            me = probe.getsockname()
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:  # the probe went to another listener
                    break
                if conn.getpeername() == me:
                    conn.close()
                    return early
                conn.setblocking(True)
                early.append(conn)
        finally:
            listener.setblocking(True)
    _close_all(early)
    return None


def _close_all(conns: list[socket.socket]) -> None:
    for conn in conns:
        conn.close()


def _accept_one(
    listener: socket.socket,
    early: list[socket.socket],
    uid: int,
    gid: int,
    log: Callable[[str], None],
) -> socket.socket:
    """The first peer, queued early or accepted now, that :func:`peer_allowed` admits."""
    pending = iter(early)
    try:
        while True:
            client = next(pending, None) or listener.accept()[0]
            peer = _UCRED.unpack(
                client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if peer_allowed(peer, uid, gid):
                return client
            log(
                f"refused a connection from pid {peer[0]} uid {peer[1]} gid {peer[2]}:"
                f" only root, uid {uid} or gid {gid} may connect"
            )
            client.close()
    finally:
        for conn in pending:
            conn.close()


def socket_from_fd(fd: int) -> socket.socket:
    """The socket inherited as ``-f fd``; an OSError that names ``fd`` if there is none."""
    try:
        sock = socket.socket(fileno=fd)
    except (OSError, ValueError) as exc:  # ValueError: a negative number
        why = exc.strerror if isinstance(exc, OSError) else "not a descriptor"
        raise OSError(f"socket descriptor {fd}: {why}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(f"fd {fd} is not an AF_UNIX stream socket")
    return sock


#: What the serving loop asks of each decoded request: its :data:`~.ops.Answer`,
#: the reply's bytes or an fd to pass (:meth:`Operations.answer`).
Answerer = Callable[[int, tuple["Any", ...]], Answer]


def serve(sock: socket.socket, answer: Answerer, log: Log) -> int:
    """Answer requests until EOF (0) or fatal garbage (1).

    The stream is framed here, with the generated decoders
    (:mod:`virtfs_proto._fastpath_generated`), by the rules of
    :class:`~virtfs_proto.connection.ServerConnection`, which the helper does
    not import: that API's request and reply objects (the messages
    dataclasses, construct behind the codec) would only cost start-up time
    and CPU per request. A payload that does not decode is answered
    ``ENOBUFS``, as QEMU's unmarshal does; a type that is not a request or
    a frame over 64 KiB closes the connection.
    """
    chunk = bytearray(RECV_BUFFER_SIZE)

    pending = bytearray()  # the start of a frame that the last recv cut short
    while True:
        try:
            n = sock.recv_into(chunk)
        except ConnectionResetError:
            return 0
        if not n:
            if pending:
                log(
                    "client went away mid-request: EOF inside a request frame"
                    f" ({len(pending)} bytes buffered)"
                )
            return 0
        # Frames are decoded where they lie: in the receive buffer itself
        # unless a frame was cut short (not copying pays, measured).
        if pending:
            pending += memoryview(chunk)[:n]
            data, available = pending, len(pending)
        else:
            data, available = chunk, n
        start = 0
        while available - start >= HEADER_SIZE:
            message_type, size = wire.HEADER.unpack_from(data, start)
            decode = wire.REQUEST_DECODERS.get(message_type)
            if size > PROXY_MAX_IO_SZ:
                log.error(
                    f"closing the connection: request announces {size} payload bytes,"
                    f" more than {PROXY_MAX_IO_SZ}"
                )
                return EXIT_FAILURE
            if decode is None:
                log.error(f"closing the connection: {message_type} is not a request type")
                return EXIT_FAILURE
            end = start + HEADER_SIZE + size
            if end > available:
                break
            # lenient: QEMU ignores bytes past the fields
            values = decode(data, start + HEADER_SIZE, end, True)
            start = end
            reply: Answer
            if values is None:
                reply = error_frame(message_type, ENOBUFS)
            else:
                reply = answer(message_type, values)
            try:
                if isinstance(reply, int):  # an fd to pass, ours to close once sent
                    try:
                        rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(reply))
                        sock.sendmsg((FD_VALID,), [rights])
                    finally:
                        os.close(reply)
                else:
                    sock.sendall(reply)
            except (BrokenPipeError, ConnectionResetError):
                return 0
        if data is pending:
            del pending[:start]
        elif start < available:
            pending = chunk[start:available]


def missing_mount_flags(root_fd: int) -> list[str]:
    """Which of ``nodev``, ``nosuid`` the mount holding ``root_fd`` lacks.

    Asked of the fd (fstatvfs), never of a name that could have changed.
    """
    flags = os.fstatvfs(root_fd).f_flag
    return [
        name for bit, name in ((os.ST_NODEV, "nodev"), (os.ST_NOSUID, "nosuid")) if not flags & bit
    ]


class Mode(Record):
    """Root or rootless, why, and (rootless) the id maps asked for."""

    __slots__ = ("maps", "rootless", "why")
    rootless: bool
    why: str
    maps: IdMaps | None

    def __init__(self, rootless: bool, why: str, maps: IdMaps | None = None) -> None:
        self._set(rootless=rootless, why=why, maps=maps)

    def line(self) -> str:
        if not self.rootless:
            return f"mode: root ({self.why})"
        return (
            f"mode: rootless ({self.why}): in a user namespace of its own, capabilities over"
            " it only"
        )


def _report(
    log: Log,
    proc_fd: int,
    export: tuple[int, int],
    root_fd: int,
    host_namespaces: dict[str, int],
    mode: Mode,
) -> list[str]:
    """The confinement as read back from /proc (through ``proc_fd``) and the
    kernel, never as merely asked for; [] (and a logged reason) if unreadable."""
    lines: list[str] = [mode.line()]
    try:
        threads = procfs.confinement_report(proc_fd=proc_fd)
        own_namespaces = sandbox.namespace_ids(proc_fd)
        nspid = procfs.status_field("self", "NSpid", proc_fd=proc_fd).split()
        uid_map, gid_map = userns.read_maps(proc_fd)
    except (OSError, privileges.ConfinementError) as exc:
        log.error(f"confinement report unavailable: {exc}")
        return []
    lines += [
        f"uid_map: {uid_map} (inside outside count; the helper is uid {os.getuid()} inside,"
        f" {uid_map.to_outside(os.getuid())} outside)",
        f"gid_map: {gid_map} (gid {os.getgid()} inside, {gid_map.to_outside(os.getgid())} outside)",
    ]
    for t in threads:
        jailed = "jailed in export" if t.root_dev_ino == export else "NOT jailed in export"
        lines.append(f"{t.format()} ({jailed})")
    where = "its own user namespace" if mode.rootless else "the initial user namespace"
    caps = ",".join(procfs.capability_names(threads[0].cap_eff)) or "none"
    lines.append(f"capabilities: {caps} (effective, over {where})")
    lines.append(
        f"{sandbox.describe_namespaces(host_namespaces, own_namespaces)}"
        f" (pid {nspid[-1]} in its pid namespace)"
    )
    lacks = missing_mount_flags(root_fd)
    lines.append(
        "export mount: "
        + ("nodev,nosuid" if not lacks else f"LACKS {','.join(lacks)}")
        + " (fstatvfs of the resolver's root)"
    )
    return lines


def _observe_landlock(proc_fd: int) -> str:
    """What Landlock does, observed: a file outside the export (this process's
    own status in its procfs) can no longer be opened."""
    try:
        os.close(os.open("self/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd))
    except PermissionError:
        return "landlock: observed: a file outside the export cannot be opened (EACCES)"
    except OSError as exc:
        return f"landlock: NOT observed: opening a file outside the export failed otherwise ({exc})"
    return "landlock: NOT observed: a file outside the export could still be opened"


def run(o: Options, log: Log) -> int:
    """Check, start, fork the serving process (the process model) and wait for it."""
    assert o.path is not None
    layers = Layers.from_options(o.sandbox, o.test_disable)
    mode = _mode(o)
    uid = gid = 0
    if layers.drop and not mode.rootless:
        uid, gid = privileges.resolve_user(o.user, o.group)
    keep = {0, 1, 2} | ({o.fd} if o.fd is not None else set())
    privileges.close_inherited_fds(keep)
    # Opened once, before daemonising (a relative -p is relative to where we
    # were started) and never looked up by name again: this fd becomes the
    # jail's root and the resolver's root.
    root_fd = os.open(o.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    # checked before "Started", so that a wrong -f is the only thing said
    inherited = socket_from_fd(o.fd) if o.fd is not None else None
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if not o.nodaemon and not o.print_confinement and not o.test_inside:
        daemonize()
        log.open_syslog()  # LOG_NDELAY: connected before the namespaces and the chroot
    log("Started")
    log(mode.line())
    unsafe = missing_mount_flags(root_fd)
    if unsafe:
        log(
            f"warning: the host's mount of the export lacks {', '.join(unsafe)}: what a guest"
            " makes there (set-id files, device nodes) takes effect for host users too",
            LOG_WARNING,
        )
    sock: socket.socket | None = None
    if o.socket is not None:
        assert o.uid is not None and o.gid is not None
        if mode.rootless:
            _check_socket_owner(o.uid, o.gid)
        # bound and accepted here, in the host's namespaces, before the fork
        sock = proxy_socket(o.socket, o.uid, o.gid, log.error)
    else:
        sock = inherited
    try:
        host_namespaces = sandbox.namespace_ids()
    except OSError:
        host_namespaces = {}
    phase("set-up")
    if mode.rootless:
        assert mode.maps is not None
        # before the pid namespace, so that the user namespace owns it (and
        # may mount its procfs)
        userns.enter_user_namespace(mode.maps)
        uid, gid = os.getuid(), os.getgid()  # as seen inside now
        phase("user namespace")
    child, alive = sandbox.fork_serving_process(new_pid_namespace=layers.namespaces)
    if child:
        phase("fork")  # the child's path starts at the mark before
        # the parent keeps nothing but the child's pid (and the pipe that
        # tells the child it is alive)
        os.close(root_fd)
        if sock is not None:
            sock.close()
        if layers.drop:
            # it only waits and forwards signals: no capability at all (and
            # it can still signal the child once that has become uid too)
            privileges.drop_privileges(uid, gid, (), rootless=mode.rootless)
        phase("parent: drop, then wait")
        return sandbox.wait_for_child(child)
    sandbox.become_serving_process(alive)
    phase("serving process")
    return _serve_confined(o, layers, mode, log, root_fd, sock, host_namespaces, uid, gid, alive)


def _mode(o: Options) -> Mode:
    rootless, why = rootless_mode(o)
    if not rootless:
        return Mode(False, why)
    if o.subids:
        maps = userns.subids_maps(os.getuid(), os.getgid())
    elif o.uid_map or o.gid_map:
        maps = userns.explicit_maps(o.uid_map, o.gid_map)
    else:
        maps = IdMaps()
    return Mode(True, why, maps)


def _check_socket_owner(uid: int, gid: int) -> None:
    """A rootless helper can give its socket only to what chown(2) lets a user give."""
    mine = os.getuid()
    groups = {os.getgid(), *os.getgroups()}
    if uid not in (mine, -1) or gid not in (*groups, -1):
        raise UsageError(
            f"-u {uid} -g {gid}: a rootless helper can give its socket only to your own uid"
            f" ({mine}) and one of your groups ({', '.join(map(str, sorted(groups)))})",
            usage=False,
        )


def _serve_confined(
    o: Options,
    layers: Layers,
    mode: Mode,
    log: Log,
    root_fd: int,
    sock: socket.socket | None,
    host_namespaces: dict[str, int],
    uid: int,
    gid: int,
    parent_alive: int,
) -> int:
    """In the serving process: build the sandbox, confine, report, serve."""
    if o.test_inside:
        # test-only, so not on the serving path; imported before the sandbox,
        # after which no module file can be opened
        from . import inside
    export_st = os.fstat(root_fd)
    export = (export_st.st_dev, export_st.st_ino)
    if layers.namespaces:
        new_root, proc_fd = sandbox.enter_namespaces(root_fd, chroot=layers.chroot)
        os.close(root_fd)
        root_fd = new_root
        proc_origin = "a detached procfs of its pid namespace"
    else:
        proc_fd, proc_origin = open_procfs()
        if layers.chroot:
            privileges.enter_jail(root_fd)
        else:
            os.fchdir(root_fd)
    try:
        fd_dir, _ = open_own_fd_dir(proc_fd)
        get_version = export_supports_getversion(root_fd)
        phase("fd dir, getversion probe")
        os.umask(0)  # modes from the client are exact
        if layers.drop:
            kept = privileges.kept_capabilities(allow_device_nodes=o.allow_device_nodes)
            privileges.drop_privileges(uid, gid, kept, proc_fd=proc_fd, rootless=mode.rootless)
            sandbox.die_with_parent(parent_alive)  # the uid change cleared it
            phase("privilege drop")
        else:
            # Landlock and seccomp need it; the drop sets it otherwise
            privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)
        # Not dumpable (become_serving_process made it so) again: an id change
        # resets the flag to fs.suid_dumpable. Its own /proc reads still work.
        privileges.prctl(privileges.PR_SET_DUMPABLE, 0)
        # ids, capabilities, namespaces and the view are final now: read them
        # back while /proc can still be opened (Landlock closes it)
        lines = _report(log, proc_fd, export, root_fd, host_namespaces, mode)
        reported = bool(lines)
        # read once, before Landlock: the maps never change once written
        id_maps = userns.read_maps(proc_fd) if mode.rootless else None
        # held open: seccomp's mode is read back through it after the filter
        status_fd = os.open(f"{os.getpid()}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        phase("confinement report")
        if layers.landlock:
            lines += landlock.restrict(root_fd, allow_device_nodes=o.allow_device_nodes).lines()
            lines.append(_observe_landlock(proc_fd))
            phase("landlock")
        else:
            lines.append("landlock: off (--test-disable=landlock)")
    finally:
        os.close(proc_fd)  # never reachable by a client request
    os.close(parent_alive)  # the death signal is set for good now
    resolver = Resolver(
        root_fd,
        use_openat2={"openat2": None, "walk": False}.get(o.resolver),
        contain=o.resolver != "none",
    )
    ops = Operations(
        resolver,
        get_version=get_version,
        log=log.error,
        fd_dir=fd_dir,
        allow_device_nodes=o.allow_device_nodes,
        id_maps=id_maps,
        clear_setid=mode.rootless and not o.allow_setid,
    )
    phase("operations")
    try:
        # last: every import done, everything set up (TSYNC: every thread)
        if layers.seccomp:
            lines += seccomp.install(
                allow_device_nodes=o.allow_device_nodes, status_fd=status_fd
            ).lines()
        else:
            lines.append("seccomp: off (--test-disable=seccomp)")
    finally:
        os.close(status_fd)
    if o.test_inside:
        return inside.run_actions(o.test_inside)
    if o.print_confinement:
        if not reported:
            return EXIT_FAILURE  # the reason was logged
        print("\n".join(f"confinement: {line}" for line in lines), flush=True)
        return 0
    for line in lines:
        log(f"confinement: {line}")
    log(f"files are reopened through {proc_origin}")
    assert sock is not None
    phase("serving")
    rc = serve(sock, ops.answer, log)
    log("Done")
    return rc


def main(argv: list[str]) -> int:
    """Entry point of ``virtfs-proto helper``; ``argv`` excludes the program name."""
    phase("imports")
    log = Log()
    try:
        o = parse_args(argv)
    except UsageError as exc:
        if exc.args[0]:
            print(exc.args[0], file=sys.stderr)
        if exc.usage:
            sys.stderr.write(USAGE + EXTRA_USAGE)
        sys.stderr.flush()
        return exc.status
    phase("options")
    try:
        return run(o, log)
    except UsageError as exc:  # a check that needs the running system (rootless)
        log.error(exc.args[0])
        return exc.status
    except (OSError, privileges.ConfinementError, SandboxError, UserNamespaceError) as exc:
        log.error(f"{exc}")
        return EXIT_FAILURE
