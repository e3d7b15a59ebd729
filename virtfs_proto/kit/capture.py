"""``virtfs-proto capture``: record golden vectors from a real helper.

Each scenario runs against a fresh fixture export and a freshly started
helper (``-f FD -p EXPORT -n``, and for a few, the named-socket mode), and
becomes one JSON file under the output directory. The scenarios cover every
request type, the error cases, escape attempts, special files, xattr size
probes and framing abuse; scenarios that show a QEMU 7.2 defect carry a
``defect`` note so no other helper is asked to copy it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import messages as m
from ..codec import codecs_for, encode_request
from ..constants import (
    HOST_BYTE_ORDER,
    PROXY_MAX_IO_SZ,
    UTIME_NOW,
    UTIME_OMIT,
    MessageType,
    ReplyKind,
)
from ..errors import HelperStartError
from ..launcher import QEMU_HELPER, Mode, check_helper_command
from .recording import Step, raw_step, record, run_steps, step

ERRNO_ENOBUFS_NOTE = "QEMU answers a payload too short for its fields with -ENOBUFS"


def P(path: str) -> bytes:
    """A V9fsPath string as QEMU sends it: its length counts a trailing NUL."""
    return path.encode() + b"\0"


def S(text: str) -> bytes:
    """A V9fsString as QEMU builds it with v9fs_string_sprintf: no NUL."""
    return text.encode()


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    steps: tuple[Step, ...]
    modes: tuple[Mode, ...] = ("fd",)
    defect: str | None = None


def _frame(message_type: int, payload: bytes) -> bytes:
    return codecs_for().header_struct.pack(message_type, len(payload)) + payload


#: Open flags, short so that the tables read like the requests.
R, D, N = os.O_RDONLY, os.O_DIRECTORY, os.O_NONBLOCK


def one(name: str, description: str, request: m.Request, **kw: Any) -> Scenario:
    """A scenario of one request."""
    return Scenario(name, description, (step(request),), **kw)


def several(name: str, description: str, *steps: Step, **kw: Any) -> Scenario:
    """A scenario of several steps."""
    return Scenario(name, description, tuple(steps), **kw)


#: T_OPEN
OPEN: tuple[Scenario, ...] = (
    one(
        "open-file",
        "open a regular file read-only",
        m.OpenRequest(P("/file.txt"), R),
        modes=("fd", "socket"),
    ),
    one("open-qemu-path", "QEMU's own path form: //name", m.OpenRequest(P("//file.txt"), R)),
    one(
        "open-dir",
        "open a directory (QEMU's opendir sends O_DIRECTORY)",
        m.OpenRequest(P("//dir"), R | D),
    ),
    one("open-enoent", "open a missing file", m.OpenRequest(P("//missing"), R)),
    one(
        "open-dotdot-escape",
        "`..` above the export root stays inside",
        m.OpenRequest(P("/../outside/secret.txt"), R),
    ),
    one(
        "open-symlink-escape-relative",
        "a relative symlink pointing out of the export",
        m.OpenRequest(P("//escape_rel"), R),
    ),
    one(
        "open-symlink-escape-absolute",
        "an absolute symlink to a host path",
        m.OpenRequest(P("//escape_abs"), R),
    ),
    one(
        "open-symlink-escape-intermediate",
        "a symlinked directory out of the export",
        m.OpenRequest(P("//escape_dir/secret.txt"), R),
    ),
    one(
        "open-symlink-inside",
        "an absolute symlink resolves inside the export",
        m.OpenRequest(P("//abs_inside"), R),
    ),
    one(
        "open-fifo",
        "a FIFO is refused with ENXIO (CVE-2023-2861)",
        m.OpenRequest(P("//fifo"), R | N),
    ),
    one(
        "open-creat",
        "O_CREAT through T_OPEN makes a mode 0000 file",
        m.OpenRequest(P("//made-by-open"), os.O_WRONLY | os.O_CREAT),
    ),
    one("open-enotdir", "a file used as a directory", m.OpenRequest(P("//file.txt/x"), R)),
)


#: T_CREATE
CREATE: tuple[Scenario, ...] = (
    one(
        "create-file",
        "create a file owned by 1000:1000, mode 0640",
        m.CreateRequest(S("//created"), os.O_RDWR | os.O_CREAT, 0o640, 1000, 1000),
        modes=("fd", "socket"),
    ),
    one(
        "create-root",
        "create a file as root",
        m.CreateRequest(S("//created"), os.O_RDWR | os.O_CREAT, 0o600, 0, 0),
    ),
    one(
        "create-eexist",
        "O_EXCL on an existing file",
        m.CreateRequest(S("//file.txt"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, 0, 0),
    ),
    one(
        "create-enoent",
        "create in a missing directory",
        m.CreateRequest(S("//missing/new"), os.O_RDWR | os.O_CREAT, 0o644, 0, 0),
    ),
    one(
        "create-escape",
        "create through `..` stays inside",
        m.CreateRequest(S("/../outside/created"), os.O_RDWR | os.O_CREAT, 0o644, 0, 0),
    ),
)


#: T_MKNOD
MKNOD: tuple[Scenario, ...] = (
    one(
        "mknod-fifo",
        "make a FIFO as root",
        m.MknodRequest(0, 0, S("//newfifo"), stat.S_IFIFO | 0o644, 0),
    ),
    one(
        "mknod-fifo-user",
        "make a FIFO as 1000:1000",
        m.MknodRequest(1000, 1000, S("//newfifo"), stat.S_IFIFO | 0o600, 0),
    ),
    one(
        "mknod-chardev-user",
        "a device node as a non-root user is refused",
        m.MknodRequest(1000, 1000, S("//null"), stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    ),
    one(
        "mknod-eexist",
        "mknod over an existing name",
        m.MknodRequest(0, 0, S("//file.txt"), stat.S_IFIFO | 0o644, 0),
    ),
)


#: T_MKDIR
MKDIR: tuple[Scenario, ...] = (
    one("mkdir", "make a directory as root", m.MkdirRequest(0, 0, S("//newdir"), 0o755)),
    one(
        "mkdir-user", "make a directory as 1000:1000", m.MkdirRequest(1000, 1000, S("//ud"), 0o700)
    ),
    one(
        "mkdir-eexist", "mkdir over an existing directory", m.MkdirRequest(0, 0, S("//dir"), 0o755)
    ),
    one(
        "mkdir-enoent",
        "mkdir in a missing directory",
        m.MkdirRequest(0, 0, S("//missing/sub"), 0o755),
    ),
    one(
        "mkdir-setgid-parent",
        "mkdir in a setgid directory inherits its group",
        m.MkdirRequest(0, 0, S("//sgid/sub"), 0o755),
    ),
)


#: T_SYMLINK
SYMLINK: tuple[Scenario, ...] = (
    one("symlink", "make a symlink", m.SymlinkRequest(0, 0, S("file.txt"), S("//newlink"))),
    one(
        "symlink-user",
        "make a symlink as 1000:1000",
        m.SymlinkRequest(1000, 1000, S("/anywhere"), S("//newlink")),
    ),
    one(
        "symlink-eexist",
        "symlink over an existing name",
        m.SymlinkRequest(0, 0, S("file.txt"), S("//link")),
    ),
)


#: T_LINK
LINK: tuple[Scenario, ...] = (
    one("link", "hard link a file", m.LinkRequest(P("//file.txt"), S("//hardlink"))),
    one("link-enoent", "hard link a missing file", m.LinkRequest(P("//missing"), S("//hl"))),
    one(
        "link-eexist",
        "hard link onto an existing name",
        m.LinkRequest(P("//file.txt"), S("//empty")),
    ),
)


#: T_LSTAT
LSTAT: tuple[Scenario, ...] = (
    one(
        "lstat-file",
        "lstat a regular file",
        m.LstatRequest(P("//file.txt")),
        modes=("fd", "socket"),
    ),
    one("lstat-root", "lstat the export root as QEMU does at start", m.LstatRequest(P("/"))),
    one("lstat-dir", "lstat a directory", m.LstatRequest(P("//dir"))),
    one("lstat-symlink", "lstat does not follow a final symlink", m.LstatRequest(P("//link"))),
    one("lstat-fifo", "lstat a FIFO (no open, no hang)", m.LstatRequest(P("//fifo"))),
    one("lstat-enoent", "lstat a missing file", m.LstatRequest(P("//missing"))),
    one("lstat-dotdot", "`/..` is the export root", m.LstatRequest(P("/.."))),
    one(
        "lstat-escape-intermediate",
        "a symlinked directory out of the export",
        m.LstatRequest(P("//escape_dir/secret.txt")),
    ),
    one(
        "lstat-no-nul", "a path without the trailing NUL works too", m.LstatRequest(S("//file.txt"))
    ),
)


#: T_READLINK
READLINK: tuple[Scenario, ...] = (
    one("readlink", "read a symlink", m.ReadlinkRequest(P("//link"), 4096)),
    one(
        "readlink-escape",
        "the target of an escaping link comes back verbatim",
        m.ReadlinkRequest(P("//escape_rel"), 4096),
    ),
    one(
        "readlink-truncated",
        "bufsize 4 gives 3 bytes, silently",
        m.ReadlinkRequest(P("//escape_rel"), 4),
    ),
    one("readlink-bufsize-1", "bufsize 1 is EINVAL", m.ReadlinkRequest(P("//link"), 1)),
    one("readlink-bufsize-0", "bufsize 0 is EINVAL", m.ReadlinkRequest(P("//link"), 0)),
    one(
        "readlink-not-link", "readlink of a regular file", m.ReadlinkRequest(P("//file.txt"), 4096)
    ),
    one(
        "readlink-negative",
        "a negative bufsize kills QEMU's helper (g_malloc(-1))",
        m.ReadlinkRequest(P("//link"), -1),
        defect="QEMU 7.2's helper dies with SIGTRAP; a helper must answer with an error",
    ),
)


#: T_STATFS
STATFS: tuple[Scenario, ...] = (
    one("statfs", "statfs of the export", m.StatfsRequest(P("/"))),
    one("statfs-enoent", "statfs of a missing path", m.StatfsRequest(P("//missing"))),
)


#: T_CHMOD
CHMOD: tuple[Scenario, ...] = (
    one("chmod", "chmod a file", m.ChmodRequest(P("//file.txt"), 0o600)),
    one(
        "chmod-through-link", "chmod follows a symlink (inside)", m.ChmodRequest(P("//link"), 0o640)
    ),
    one("chmod-enoent", "chmod a missing file", m.ChmodRequest(P("//missing"), 0o600)),
)


#: T_CHOWN
CHOWN: tuple[Scenario, ...] = (
    one("chown", "chown a file to 1000:1000", m.ChownRequest(P("//file.txt"), 1000, 1000)),
    one(
        "chown-unchanged",
        "-1 leaves ids unchanged",
        m.ChownRequest(P("//file.txt"), 0xFFFFFFFF, 0xFFFFFFFF),
    ),
    one(
        "chown-symlink",
        "lchown changes the link, not its target",
        m.ChownRequest(P("//link"), 1000, 1000),
    ),
    one("chown-enoent", "chown a missing file", m.ChownRequest(P("//missing"), 0, 0)),
)


#: T_TRUNCATE
TRUNCATE: tuple[Scenario, ...] = (
    one("truncate-shrink", "truncate to 3 bytes", m.TruncateRequest(P("//file.txt"), 3)),
    one("truncate-grow", "extend to 100 bytes", m.TruncateRequest(P("//file.txt"), 100)),
    one("truncate-negative", "a negative length is EINVAL", m.TruncateRequest(P("//file.txt"), -1)),
    one("truncate-dir", "truncate a directory", m.TruncateRequest(P("//dir"), 0)),
)


#: T_UTIME
UTIME: tuple[Scenario, ...] = (
    one(
        "utime",
        "set both times",
        m.UtimeRequest(P("//file.txt"), 1_000_000_000, 5, 1_100_000_000, 7),
    ),
    one(
        "utime-now",
        "UTIME_NOW in both nsec slots",
        m.UtimeRequest(P("//file.txt"), 0, UTIME_NOW, 0, UTIME_NOW),
    ),
    one(
        "utime-omit",
        "UTIME_OMIT in both nsec slots",
        m.UtimeRequest(P("//file.txt"), 0, UTIME_OMIT, 0, UTIME_OMIT),
    ),
    one(
        "utime-symlink",
        "utime does not follow a symlink",
        m.UtimeRequest(P("//link"), 1_000_000_000, 0, 1_000_000_000, 0),
    ),
    one("utime-enoent", "utime of a missing file", m.UtimeRequest(P("//missing"), 0, 0, 0, 0)),
)


#: T_RENAME
RENAME: tuple[Scenario, ...] = (
    one("rename", "rename a file", m.RenameRequest(S("//file.txt"), S("//renamed"))),
    one(
        "rename-over",
        "rename over an existing file",
        m.RenameRequest(S("//file.txt"), S("//empty")),
    ),
    one("rename-dir", "rename a directory", m.RenameRequest(S("//dir"), S("//dir2"))),
    one(
        "rename-dir-over-nonempty",
        "rename a directory over a non-empty one",
        m.RenameRequest(S("//emptydir"), S("//dir")),
    ),
    one("rename-enoent", "rename a missing file", m.RenameRequest(S("//missing"), S("//x"))),
    one(
        "rename-escape",
        "rename out through `..` stays inside",
        m.RenameRequest(S("//file.txt"), S("/../outside/moved")),
    ),
)


#: T_REMOVE
REMOVE: tuple[Scenario, ...] = (
    one("remove-file", "remove a file", m.RemoveRequest(S("//file.txt"))),
    one("remove-dir", "remove an empty directory", m.RemoveRequest(S("//emptydir"))),
    one("remove-nonempty", "remove a non-empty directory", m.RemoveRequest(S("//dir"))),
    one("remove-enoent", "remove a missing file", m.RemoveRequest(S("//missing"))),
    one("remove-symlink", "remove a symlink, not its target", m.RemoveRequest(S("//link"))),
)


#: xattrs
XATTRS: tuple[Scenario, ...] = (
    one(
        "lgetxattr-probe",
        "size 0 asks for the length",
        m.LgetxattrRequest(0, P("//xattrs.txt"), S("user.comment")),
    ),
    one("lgetxattr", "fetch a value", m.LgetxattrRequest(64, P("//xattrs.txt"), S("user.comment"))),
    one(
        "lgetxattr-empty",
        "fetch an empty value",
        m.LgetxattrRequest(64, P("//xattrs.txt"), S("user.empty")),
    ),
    one(
        "lgetxattr-erange",
        "a buffer too small is ERANGE",
        m.LgetxattrRequest(2, P("//xattrs.txt"), S("user.comment")),
    ),
    one(
        "lgetxattr-enodata",
        "a missing attribute is ENODATA",
        m.LgetxattrRequest(64, P("//xattrs.txt"), S("user.missing")),
    ),
    one("lgetxattr-enoent", "a missing file", m.LgetxattrRequest(0, P("//missing"), S("user.x"))),
    one(
        "lgetxattr-negative",
        "a negative size kills QEMU's helper (g_malloc(-1))",
        m.LgetxattrRequest(-1, P("//xattrs.txt"), S("user.comment")),
        defect="QEMU 7.2's helper dies with SIGTRAP; a helper must answer with an error",
    ),
    one(
        "llistxattr-probe",
        "size 0 asks for the list's length",
        m.LlistxattrRequest(0, P("//xattrs.txt")),
    ),
    one("llistxattr", "fetch the NUL-separated list", m.LlistxattrRequest(256, P("//xattrs.txt"))),
    one(
        "llistxattr-erange",
        "a buffer too small is ERANGE",
        m.LlistxattrRequest(4, P("//xattrs.txt")),
    ),
    one("llistxattr-none", "a file with no attributes", m.LlistxattrRequest(256, P("//file.txt"))),
    one(
        "lsetxattr",
        "set a new attribute",
        m.LsetxattrRequest(P("//file.txt"), S("user.new"), S("value"), 5, 0),
    ),
    one(
        "lsetxattr-prefix",
        "size, not the string, decides how much is stored",
        m.LsetxattrRequest(P("//file.txt"), S("user.new"), S("value"), 3, 0),
    ),
    one(
        "lsetxattr-create-eexist",
        "XATTR_CREATE on an existing attribute",
        m.LsetxattrRequest(P("//xattrs.txt"), S("user.comment"), S("x"), 1, 1),
    ),
    one(
        "lsetxattr-replace-enodata",
        "XATTR_REPLACE on a missing attribute",
        m.LsetxattrRequest(P("//file.txt"), S("user.missing"), S("x"), 1, 2),
    ),
    one(
        "lsetxattr-symlink",
        "user.* on a symlink is EPERM",
        m.LsetxattrRequest(P("//link"), S("user.new"), S("x"), 1, 0),
    ),
    one(
        "lremovexattr",
        "remove an attribute",
        m.LremovexattrRequest(P("//xattrs.txt"), S("user.comment")),
    ),
    one(
        "lremovexattr-enodata",
        "remove a missing attribute",
        m.LremovexattrRequest(P("//xattrs.txt"), S("user.missing")),
    ),
)


#: T_GETVERSION
GETVERSION: tuple[Scenario, ...] = (
    one(
        "getversion",
        "inode generation of a file (machine-dependent value)",
        m.GetversionRequest(P("//file.txt")),
    ),
    one("getversion-enoent", "generation of a missing file", m.GetversionRequest(P("//missing"))),
)


#: Credentials: QEMU's uid 0 / gid N defect (notes §8)
CREDENTIALS: tuple[Scenario, ...] = (
    several(
        "creds-uid0-gidN",
        "mkdir as 0:1000, then chown, then mkdir as 1000:1000",
        step(m.MkdirRequest(0, 1000, S("//d0"), 0o755)),
        step(m.ChownRequest(P("//file.txt"), 1000, 1000)),
        step(m.MkdirRequest(1000, 1000, S("//d1"), 0o755)),
        defect="QEMU 7.2's helper loses its capabilities after a uid 0 / gid N request"
        " (chown then fails with EPERM) and dies with SIGABRT on the next request with"
        " a non-zero uid",
    ),
)


def _framing() -> list[Scenario]:
    """Framing: frames cut short, padded, oversized, of unknown types, pipelined."""
    out: list[Scenario] = []

    def add(name: str, description: str, *steps: Step, **kw: Any) -> None:
        out.append(several(name, description, *steps, **kw))

    lstat_ok = step(m.LstatRequest(P("//file.txt")))
    add(
        "frame-short-payload",
        f"{ERRNO_ENOBUFS_NOTE}; the stream stays in step",
        raw_step(_frame(MessageType.T_LSTAT, b"\x0a\x00ab"), ReplyKind.RESPONSE),
        lstat_ok,
    )
    add(
        "frame-short-payload-fd",
        "the ENOBUFS answer to T_OPEN is a bare int32",
        raw_step(_frame(MessageType.T_OPEN, b"\x02\x00/"), ReplyKind.FD),
        lstat_ok,
    )
    add(
        "frame-empty-payload",
        "T_MKDIR with no payload at all",
        raw_step(_frame(MessageType.T_MKDIR, b""), ReplyKind.STATUS),
        lstat_ok,
    )
    good = encode_request(m.LstatRequest(P("//file.txt")))
    add(
        "frame-trailing-bytes",
        "bytes after the last field are ignored by QEMU",
        raw_step(_frame(MessageType.T_LSTAT, good[8:] + b"xyz"), ReplyKind.RESPONSE),
        lstat_ok,
    )
    add(
        "frame-max-size",
        "a payload of exactly 65536 bytes is accepted",
        raw_step(
            _frame(MessageType.T_LSTAT, good[8:].ljust(PROXY_MAX_IO_SZ, b"\0")), ReplyKind.RESPONSE
        ),
    )
    add(
        "frame-oversize",
        "a header announcing 65537 bytes: the helper hangs up, no reply",
        raw_step(codecs_for().header_struct.pack(MessageType.T_LSTAT, PROXY_MAX_IO_SZ + 1)),
    )
    for code in (0, 1, 22, 0xFFFFFFFF):
        add(
            f"frame-unknown-type-{code}",
            f"type {code} is not a request: the helper hangs up",
            raw_step(_frame(code, b"")),
        )
    add(
        "frame-eof-in-header",
        "EOF in the middle of a header: clean exit",
        raw_step(good[:5], shutdown=True),
    )
    add(
        "frame-eof-in-payload",
        "EOF in the middle of a payload: clean exit",
        raw_step(good[:12], shutdown=True),
    )
    burst = b"".join(
        encode_request(r)
        for r in (
            m.LstatRequest(P("//file.txt")),
            m.OpenRequest(P("//file.txt"), R),
            m.ReadlinkRequest(P("//link"), 4096),
        )
    )
    add(
        "frame-pipelined",
        "three requests in one write are answered in order",
        raw_step(burst, ReplyKind.RESPONSE),
        raw_step(b"", ReplyKind.FD),
        raw_step(b"", ReplyKind.RESPONSE),
    )
    return out


#: The scenarios by operation, in recording order (framing last).
TABLES: tuple[tuple[Scenario, ...], ...] = (
    OPEN,
    CREATE,
    MKNOD,
    MKDIR,
    SYMLINK,
    LINK,
    LSTAT,
    READLINK,
    STATFS,
    CHMOD,
    CHOWN,
    TRUNCATE,
    UTIME,
    RENAME,
    REMOVE,
    XATTRS,
    GETVERSION,
    CREDENTIALS,
)


def scenarios() -> list[Scenario]:
    """Every scenario the capture tool records."""
    return [*(sc for table in TABLES for sc in table), *_framing()]


def _source(helper: Sequence[str]) -> dict[str, Any]:
    exe = helper[0]
    source: dict[str, Any] = {"helper": " ".join(helper)}
    with contextlib.suppress(OSError):
        source["sha256"] = hashlib.sha256(Path(exe).read_bytes()).hexdigest()
    try:
        owner = subprocess.run(
            ["dpkg-query", "-S", exe], capture_output=True, text=True, check=True
        ).stdout.split(":")[0]
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", owner], capture_output=True, text=True, check=True
        ).stdout
        source["package"] = f"{owner} {version}"
    except (OSError, subprocess.CalledProcessError):
        pass
    return source


def capture(helper: Sequence[str], out: Path | None, only: str | None = None) -> list[Any]:
    """Run every scenario against ``helper`` and write (if ``out``) one file per vector."""
    source = _source(helper)
    vectors = []
    for sc in scenarios():
        if only and only not in sc.name:
            continue
        for mode in sc.modes:
            outcome, _ = run_steps(helper, sc.steps, mode=mode)
            name = sc.name if mode == "fd" else f"{sc.name}@socket"
            vec = record(
                name,
                sc.description,
                sc.steps,
                outcome,
                mode=mode,
                source=source,
                byteorder=HOST_BYTE_ORDER,
                defect=sc.defect,
            )
            vectors.append(vec)
            if out is not None:
                path = out / f"{name}.json"
                path.write_text(json.dumps(vec.to_json(), indent=1) + "\n")
    return vectors


def build_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto capture`` parser."""
    parser = argparse.ArgumentParser(prog="virtfs-proto capture", description=__doc__)
    parser.add_argument("--helper", default=QEMU_HELPER, help="helper command (default: QEMU's)")
    parser.add_argument(
        "--out", type=Path, help="directory for the vector files (required: nothing has a default)"
    )
    parser.add_argument("--only", help="only scenarios whose name contains this")
    return parser


def main(argv: list[str]) -> int:
    """``virtfs-proto capture --out DIR [--helper CMD] [--only TEXT]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        # No default: a default next to the packaged vectors would overwrite them.
        parser.error(
            "--out DIR is required: the vectors are written there "
            "(replay them with `virtfs-proto conformance --vectors DIR`)"
        )
    try:
        helper = check_helper_command(args.helper)
    except HelperStartError as exc:
        print(f"capture: {exc.one_line()}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    vectors = capture(helper, args.out, args.only)
    print(f"captured {len(vectors)} vectors into {args.out}")
    return 0
