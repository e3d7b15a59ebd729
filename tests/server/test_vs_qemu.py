"""Our helper answers like QEMU 7.2's helper, request for request.

The same script runs against QEMU's helper and ours, each on its own copy of
the same export; replies must be identical except for the machine-dependent
fields (device, inode, times, fsid, generation). Passed fds must name files
with the same content, type and flags.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import stat
from pathlib import Path

import pytest

from virtfs_proto import messages as m
from virtfs_proto.codec import encode_reply
from virtfs_proto.launcher import Helper

from .conftest import LAYERS, Export, build_export, spawn_ours, spawn_qemu

O_DIRECTORY = os.O_DIRECTORY
NUL = b"\0"

#: Requests as QEMU sends them (paths with the trailing NUL, "//name" forms)
#: and as raw clients might (no NUL, relative, odd flags), successes and errors.
SCRIPT: list[m.Request] = [
    m.LstatRequest(b"/" + NUL),
    m.LstatRequest(b"//file.txt" + NUL),
    m.LstatRequest(b"file.txt"),
    m.LstatRequest(b"//dir/sub.txt" + NUL),
    m.LstatRequest(b"//link_abs" + NUL),
    m.LstatRequest(b"//nonexistent" + NUL),
    m.LstatRequest(b"//file.txt/x" + NUL),
    m.LstatRequest(b"//fifo" + NUL),
    m.LstatRequest(b"/" + b"n" * 300 + NUL),
    m.ReadlinkRequest(b"//link_abs" + NUL, 4096),
    m.ReadlinkRequest(b"//link_abs" + NUL, 5),
    m.ReadlinkRequest(b"//link_abs" + NUL, 1),
    m.ReadlinkRequest(b"//link_abs" + NUL, 0),
    m.ReadlinkRequest(b"//file.txt" + NUL, 4096),
    m.ReadlinkRequest(b"//missing" + NUL, 4096),
    m.StatfsRequest(b"/" + NUL),
    m.StatfsRequest(b"//missing" + NUL),
    m.OpenRequest(b"//file.txt" + NUL, os.O_RDONLY),
    m.OpenRequest(b"//file.txt" + NUL, os.O_RDWR | os.O_APPEND),
    m.OpenRequest(b"//dir" + NUL, os.O_RDONLY | O_DIRECTORY),
    m.OpenRequest(b"//link_abs" + NUL, os.O_RDONLY),
    m.OpenRequest(b"//link_abs" + NUL, os.O_RDONLY | os.O_NOFOLLOW),
    m.OpenRequest(b"//missing" + NUL, os.O_RDONLY),
    m.OpenRequest(b"//file.txt" + NUL, os.O_RDONLY | O_DIRECTORY),
    m.OpenRequest(b"//dir" + NUL, os.O_WRONLY),
    m.OpenRequest(b"//fifo" + NUL, os.O_RDONLY | os.O_NONBLOCK),
    m.CreateRequest(b"//created", os.O_RDWR | os.O_CREAT, 0o640, 1000, 1000),
    m.CreateRequest(b"//created", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640, 1000, 1000),
    m.CreateRequest(b"//setgid_file", os.O_RDWR | os.O_CREAT, 0o2755, 1000, 1000),
    m.CreateRequest(b"//nodir/x", os.O_RDWR | os.O_CREAT, 0o644, 0, 0),
    m.LstatRequest(b"//created" + NUL),
    m.LstatRequest(b"//setgid_file" + NUL),
    m.MkdirRequest(1000, 1000, b"//newdir", 0o755),
    m.MkdirRequest(1000, 1000, b"//newdir", 0o755),
    m.MkdirRequest(0, 0, b"//rootdir", 0o1777),
    m.LstatRequest(b"//newdir" + NUL),
    m.LstatRequest(b"//rootdir" + NUL),
    m.MknodRequest(1000, 1000, b"//newfifo", stat.S_IFIFO | 0o600, 0),
    m.MknodRequest(1000, 1000, b"//newreg", stat.S_IFREG | 0o604, 0),
    m.MknodRequest(1000, 1000, b"//newnull", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    m.MknodRequest(0, 0, b"//rootnull", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
    m.LstatRequest(b"//newfifo" + NUL),
    m.LstatRequest(b"//newreg" + NUL),
    m.LstatRequest(b"//rootnull" + NUL),
    m.SymlinkRequest(1000, 1000, b"dir/sub.txt", b"//newlink"),
    m.SymlinkRequest(1000, 1000, b"x", b"//newlink"),
    m.LstatRequest(b"//newlink" + NUL),
    m.ReadlinkRequest(b"//newlink" + NUL, 4096),
    m.LinkRequest(b"//file.txt" + NUL, b"//hardlink"),
    m.LinkRequest(b"//missing" + NUL, b"//hardlink2"),
    m.LinkRequest(b"//file.txt" + NUL, b"//hardlink"),
    m.LstatRequest(b"//hardlink" + NUL),
    m.ChmodRequest(b"//created" + NUL, 0o4711),
    m.ChmodRequest(b"//link_abs" + NUL, 0o600),
    m.ChmodRequest(b"//missing" + NUL, 0o600),
    m.LstatRequest(b"//created" + NUL),
    m.LstatRequest(b"//file.txt" + NUL),
    m.ChownRequest(b"//created" + NUL, 1234, 0xFFFFFFFF),
    m.ChownRequest(b"//newlink" + NUL, 4321, 4321),
    m.ChownRequest(b"//missing" + NUL, 1, 1),
    m.LstatRequest(b"//created" + NUL),
    m.LstatRequest(b"//newlink" + NUL),
    m.TruncateRequest(b"//file.txt" + NUL, 3),
    m.TruncateRequest(b"//file.txt" + NUL, -1),
    m.TruncateRequest(b"//dir" + NUL, 0),
    m.TruncateRequest(b"//missing" + NUL, 0),
    m.LstatRequest(b"//file.txt" + NUL),
    m.UtimeRequest(b"//file.txt" + NUL, 1000, 5, 2000, 7),
    m.UtimeRequest(b"//newlink" + NUL, 3000, 0, 4000, 0),
    m.UtimeRequest(b"//file.txt" + NUL, 0, (1 << 30) - 2, 5000, 9),
    m.UtimeRequest(b"//file.txt" + NUL, 0, 2_000_000_000, 0, 0),
    m.UtimeRequest(b"//missing" + NUL, 0, 0, 0, 0),
    m.RenameRequest(b"//newreg", b"//renamed"),
    m.RenameRequest(b"//missing", b"//renamed2"),
    m.RenameRequest(b"//dir", b"//a"),
    m.LstatRequest(b"//renamed" + NUL),
    m.LsetxattrRequest(b"//file.txt" + NUL, b"user.comment", b"hello", 5, 0),
    m.LsetxattrRequest(b"//file.txt" + NUL, b"user.prefix", b"abcdef", 3, 0),
    m.LsetxattrRequest(b"//file.txt" + NUL, b"user.comment", b"again", 5, 1),
    m.LsetxattrRequest(b"//newlink" + NUL, b"user.comment", b"x", 1, 0),
    m.LsetxattrRequest(b"//file.txt" + NUL, b"user.empty", b"", 0, 0),
    m.LgetxattrRequest(0, b"//file.txt" + NUL, b"user.comment"),
    m.LgetxattrRequest(100, b"//file.txt" + NUL, b"user.comment"),
    m.LgetxattrRequest(2, b"//file.txt" + NUL, b"user.comment"),
    m.LgetxattrRequest(100, b"//file.txt" + NUL, b"user.prefix"),
    m.LgetxattrRequest(100, b"//file.txt" + NUL, b"user.missing"),
    m.LgetxattrRequest(100, b"//newlink" + NUL, b"user.comment"),
    m.LlistxattrRequest(0, b"//file.txt" + NUL),
    m.LlistxattrRequest(4096, b"//file.txt" + NUL),
    m.LlistxattrRequest(3, b"//file.txt" + NUL),
    m.LlistxattrRequest(4096, b"//missing" + NUL),
    m.LremovexattrRequest(b"//file.txt" + NUL, b"user.comment"),
    m.LremovexattrRequest(b"//file.txt" + NUL, b"user.comment"),
    m.LlistxattrRequest(4096, b"//file.txt" + NUL),
    m.GetversionRequest(b"//missing" + NUL),
    m.RemoveRequest(b"//renamed"),
    m.RemoveRequest(b"//newdir"),
    m.RemoveRequest(b"//a"),
    m.RemoveRequest(b"//missing"),
    m.LstatRequest(b"//renamed" + NUL),
    m.LstatRequest(b"//newdir" + NUL),
    # special files, symlinks and the root, through every kind of request
    m.OpenRequest(b"//opened_creat" + NUL, os.O_RDWR | os.O_CREAT),
    m.LstatRequest(b"//opened_creat" + NUL),
    m.OpenRequest(b"//file.txt" + NUL, os.O_WRONLY | os.O_TRUNC),
    m.LstatRequest(b"//file.txt" + NUL),
    m.CreateRequest(b"//fifo", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644, 0, 0),
    m.TruncateRequest(b"//fifo" + NUL, 0),
    m.ChmodRequest(b"//fifo" + NUL, 0o640),
    m.ChownRequest(b"//fifo" + NUL, 5, 6),
    m.UtimeRequest(b"//fifo" + NUL, 1, 2, 3, 4),
    m.LstatRequest(b"//fifo" + NUL),
    m.LsetxattrRequest(b"//fifo" + NUL, b"user.x", b"v", 1, 0),
    m.LgetxattrRequest(10, b"//fifo" + NUL, b"user.x"),
    m.LlistxattrRequest(100, b"//link_abs" + NUL),
    m.LsetxattrRequest(b"/" + NUL, b"user.root", b"r", 1, 0),
    m.LgetxattrRequest(10, b"/" + NUL, b"user.root"),
    m.LlistxattrRequest(100, b"/" + NUL),
    m.ReadlinkRequest(b"//link_abs" + NUL, 2),
    m.ReadlinkRequest(b"//dir/sub.txt" + NUL, 100),
    m.ChownRequest(b"//dir" + NUL, 11, 12),
    m.LstatRequest(b"//dir" + NUL),
    m.MkdirRequest(0, 0, b"//empty1", 0o700),
    m.MkdirRequest(0, 0, b"//empty2", 0o700),
    m.RenameRequest(b"//empty1", b"//empty2"),
    m.RenameRequest(b"//file.txt", b"//dir"),
    m.LinkRequest(b"//link_abs" + NUL, b"//link_hard"),
    m.LstatRequest(b"//link_hard" + NUL),
    m.LinkRequest(b"//dir" + NUL, b"//dir_hard"),
    m.RemoveRequest(b"//link_dir"),
    m.LstatRequest(b"//dir/sub.txt" + NUL),
    m.StatfsRequest(b"//dir/sub.txt" + NUL),
    m.StatfsRequest(b"//fifo" + NUL),
    m.SymlinkRequest(1, 2, b"/../../etc/passwd", b"//evil"),
    m.ReadlinkRequest(b"//evil" + NUL, 4096),
    m.OpenRequest(b"//evil" + NUL, os.O_RDONLY),
    m.TruncateRequest(b"//nodir/x" + NUL, 0),
    m.UtimeRequest(b"//dir/missing" + NUL, 0, 0, 0, 0),
]

#: Fields whose values depend on the machine, the file system or the clock.
MACHINE_FIELDS = {
    m.StatReply: ("st_dev", "st_ino", "st_atim_sec", "st_atim_nsec", "st_mtim_sec",
                  "st_mtim_nsec", "st_ctim_sec", "st_ctim_nsec"),
    m.StatfsReply: ("f_bfree", "f_bavail", "f_ffree", "f_fsid0", "f_fsid1", "f_files",
                    "f_blocks"),
    m.VersionReply: ("version",),
}  # fmt: skip


def normalize(request: m.Request, reply: m.Reply, ignore_flags: int = 0) -> bytes:
    """The reply's wire bytes with machine-dependent fields zeroed (fds described)."""
    if isinstance(reply, m.FdReply):
        st = os.fstat(reply.fd)
        flags = fcntl.fcntl(reply.fd, fcntl.F_GETFL) & ~ignore_flags
        readable = flags & os.O_ACCMODE != os.O_WRONLY
        content = os.pread(reply.fd, 100, 0) if stat.S_ISREG(st.st_mode) and readable else b""
        os.close(reply.fd)
        return f"fd mode={st.st_mode:o} flags={flags:o} {content!r}".encode()
    fields = MACHINE_FIELDS.get(type(reply), ())
    if fields:
        reply = dataclasses.replace(reply, **dict.fromkeys(fields, 0))  # type: ignore[arg-type]
    return encode_reply(request, reply)


def run_script(helper: Helper, script: list[m.Request], ignore_flags: int = 0) -> list[bytes]:
    return [normalize(req, helper.client.request(req), ignore_flags) for req in script]


_QEMU_REPLIES: list[list[bytes]] = []


def qemu_script_replies(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """QEMU's answers to SCRIPT, recorded once per session (inside a test, so a
    missing binary is a test failure with the install hint, not a setup error)."""
    if not _QEMU_REPLIES:
        base = tmp_path_factory.mktemp("qemu")
        qemu = spawn_qemu(build_export(base).root)
        try:
            replies = run_script(qemu, SCRIPT)
        finally:
            rc = qemu.close()
        assert rc == 0
        _QEMU_REPLIES.append(replies)
    return _QEMU_REPLIES[0]


#: The namespaces' view alone contains every path, but its root is the tmpfs
#: that holds the export: absolute paths name other (missing) files there, so
#: its answers are not QEMU's. Every layer that serves correctly on its own:
SERVING_LAYERS = [layer for layer in LAYERS if layer != "ns-view"]


@pytest.mark.qemu_helper
@pytest.mark.parametrize("layer", SERVING_LAYERS)
def test_script_replies_match_qemu(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, layer: str
) -> None:
    """With both containment layers, and with each alone, the answers are QEMU's
    (device nodes allowed: by default ours refuses the script's ``rootnull``)."""
    theirs = qemu_script_replies(tmp_path_factory)
    ours = spawn_ours(build_export(tmp_path).root, *LAYERS[layer], "--allow-device-nodes")
    # The walk (for kernels without openat2) must open the last component
    # O_NOFOLLOW, and F_GETFL shows that flag on the passed fd: a documented
    # deviation of the fallback only.
    ignore = os.O_NOFOLLOW if layer == "a-walk" else 0
    try:
        mine = run_script(ours, SCRIPT, ignore)
    finally:
        rc = ours.close()
    diffs = [
        f"{req}:\n  qemu {q.hex() if not q.startswith(b'fd') else q!r}\n"
        f"  ours {o.hex() if not o.startswith(b'fd') else o!r}"
        for req, q, o in zip(SCRIPT, theirs, mine, strict=True)
        if q != o
    ]
    assert not diffs, "\n".join(diffs)
    assert rc == 0


@pytest.mark.qemu_helper
def test_getversion_low_bits_match_qemu_and_high_bits_are_zero(
    export: Export, helpers: list[Helper]
) -> None:
    """QEMU's high 32 bits are stack garbage; ours are 0 and the generation is the same."""
    qemu = spawn_qemu(export.root)
    ours = spawn_ours(export.root)
    helpers += [qemu, ours]
    for path in (b"//file.txt\0", b"//dir\0", b"/\0"):
        q = qemu.client.request(m.GetversionRequest(path))
        o = ours.client.request(m.GetversionRequest(path))
        assert isinstance(q, m.VersionReply) and isinstance(o, m.VersionReply)
        assert o.version >> 32 == 0
        assert o.version == q.version & 0xFFFFFFFF
