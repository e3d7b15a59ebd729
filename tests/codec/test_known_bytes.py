"""Byte-exact examples written out as hex: independent checks of the definitions.

The bytes come from the research notes on QEMU 7.2 (qemu-7.2-proxy-protocol.md;
observed on the real helper where marked there) and the C marshal formats, not
from the codec. Little-endian unless a test says otherwise (x86-64 host order).
"""

from __future__ import annotations

import pytest

from virtfs_proto import messages as m
from virtfs_proto.codec import decode_reply, decode_request, encode_reply, encode_request
from virtfs_proto.constants import UTIME_NOW, UTIME_OMIT
from virtfs_proto.errors import FrameTooLarge, UnknownMessageType


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- requests -------------------------------------------------------------------

REQUESTS = [
    # T_LSTAT of "/file\0": QEMU counts the NUL of a V9fsPath in the length
    ("08000000 08000000 0600 2f66696c6500", m.LstatRequest(b"/file\x00")),
    # T_OPEN "/" O_DIRECTORY (x86-64 0x10000), as proxy_opendir sends it
    ("02000000 08000000 0200 2f00 00000100", m.OpenRequest(b"/\x00", 0o200000)),
    # T_MKNOD "ddsdq": creds first; a FIFO 010644, rdev 0
    (
        "04000000 1b000000 00000000 00000000 0500 2f2f666966 a4110000 0000000000000000",
        m.MknodRequest(0, 0, b"//fif", 0o10644, 0),
    ),
    # T_MKDIR "ddsd" uid 1000 gid 1000 "//dir" 0755
    (
        "05000000 13000000 e8030000 e8030000 0500 2f2f646972 ed010000",
        m.MkdirRequest(1000, 1000, b"//dir", 0o755),
    ),
    # T_SYMLINK "ddss": the target comes first
    (
        "06000000 12000000 00000000 00000000 0300 2e2e2f 0300 2f2f6c",
        m.SymlinkRequest(0, 0, b"../", b"//l"),
    ),
    # T_READLINK "sd" with QEMU's bufsize PATH_MAX
    ("09000000 08000000 0200 2f00 00100000", m.ReadlinkRequest(b"/\x00", 4096)),
    # T_CHOWN "sdd": 0xffffffff keeps the gid
    ("0c000000 0c000000 0200 2f00 e8030000 ffffffff", m.ChownRequest(b"/\x00", 1000, 0xFFFFFFFF)),
    # T_TRUNCATE "sq"
    ("0d000000 0c000000 0200 2f00 0010000000000000", m.TruncateRequest(b"/\x00", 4096)),
    # T_UTIME "sqqqq": UTIME_NOW and UTIME_OMIT go raw into the nsec slots
    (
        "0e000000 24000000 0200 2f00"
        " 0000000000000000 ffffff3f00000000 0100000000000000 feffff3f00000000",
        m.UtimeRequest(b"/\x00", 0, UTIME_NOW, 1, UTIME_OMIT),
    ),
    # T_LGETXATTR "dss": size first; size 0 is the length probe
    (
        "11000000 1a000000 00000000 0600 2f66696c6500 0c00 757365722e636f6d6d656e74",
        m.LgetxattrRequest(0, b"/file\x00", b"user.comment"),
    ),
    # T_LSETXATTR "sssdd": size after the value, then flags XATTR_CREATE
    (
        "13000000 19000000 0200 2f00 0600 757365722e61 0300 766174 02000000 01000000",
        m.LsetxattrRequest(b"/\x00", b"user.a", b"vat", 2, 1),
    ),
    # T_GETVERSION "s"
    ("15000000 04000000 0200 2f00", m.GetversionRequest(b"/\x00")),
]


@pytest.mark.parametrize(("hexdata", "request_"), REQUESTS, ids=lambda x: type(x).__name__)
def test_request_bytes(hexdata: str, request_: m.Request) -> None:
    data = h(hexdata)
    assert encode_request(request_, byteorder="little") == data
    assert decode_request(data, byteorder="little") == request_


def test_create_request_bytes() -> None:
    data = h(
        "03000000 19000000"
        " 0700 2f2f6e65772e74"  # "//new.t"
        " 42000000"  # O_RDWR|O_CREAT
        " a4010000 e8030000 e8030000"  # mode 0644, uid 1000, gid 1000
    )
    request = m.CreateRequest(b"//new.t", 0o102, 0o644, 1000, 1000)
    assert encode_request(request, byteorder="little") == data
    assert decode_request(data, byteorder="little") == request


def test_big_endian_lstat() -> None:
    data = h("00000008 00000008 0006 2f66696c6500")
    assert encode_request(m.LstatRequest(b"/file\x00"), byteorder="big") == data
    assert decode_request(data, byteorder="big") == m.LstatRequest(b"/file\x00")


def test_fatal_request_headers() -> None:
    with pytest.raises(FrameTooLarge):
        decode_request(h("08000000 01000100"), byteorder="little")
    with pytest.raises(UnknownMessageType):
        decode_request(h("16000000 00000000"), byteorder="little")
    # a request of exactly 64 KiB is fine
    data = h("08000000 00000100 feff") + b"p" * 65534
    assert decode_request(data, byteorder="little") == m.LstatRequest(b"p" * 65534)


# -- replies ---------------------------------------------------------------------

CHMOD = m.ChmodRequest(b"/\x00", 0o644)
OPEN = m.OpenRequest(b"/file\x00", 0)


def check_reply(
    request: m.Request, hexdata: str, reply: m.Reply, fds: tuple[int, ...] = ()
) -> None:
    data = h(hexdata)
    assert encode_reply(request, reply, byteorder="little") == data
    assert decode_reply(request, data, fds=fds, byteorder="little") == reply


def test_status_replies() -> None:
    check_reply(CHMOD, "00000000 04000000 00000000", m.StatusReply())
    check_reply(CHMOD, "01000000 04000000 feffffff", m.ErrorReply(2))  # ENOENT


@pytest.mark.parametrize(
    ("word", "errno"),
    [
        ("feffffff", 2),  # ENOENT
        ("97ffffff", 105),  # ENOBUFS
        ("eaffffff", 22),  # EINVAL
        ("faffffff", 6),  # ENXIO
        ("ffffffff", 1),  # EPERM
        ("dcffffff", 36),  # ENAMETOOLONG
        ("00000080", 2**31),  # the most negative int32
    ],
)
def test_errno_words(word: str, errno: int) -> None:
    check_reply(OPEN, word, m.ErrorReply(errno))  # FD kind: the bare int32
    check_reply(m.LstatRequest(b"/\x00"), "01000000 04000000" + word, m.ErrorReply(errno))


def test_fd_reply() -> None:
    check_reply(OPEN, "ffffff7f", m.FdReply(5), fds=(5,))


def test_big_endian_replies() -> None:
    assert encode_reply(CHMOD, m.ErrorReply(2), byteorder="big") == h("00000001 00000004 fffffffe")
    assert encode_reply(OPEN, m.FdReply(3), byteorder="big") == h("7fffffff")


def test_stat_reply_layout() -> None:
    """ProxyStat: 116 bytes, header 00000000 74000000, fields at the notes' offsets."""
    values = [0x1000 + i for i in range(16)]
    values[3] = 0o100644  # st_mode (u32)
    values[4] = 1000  # st_uid (u32)
    values[5] = 1001  # st_gid (u32)
    reply = m.StatReply(*values)
    data = encode_reply(m.LstatRequest(b"/\x00"), reply, byteorder="little")
    assert data[:8] == h("00000000 74000000")
    assert len(data) == 8 + 116
    # offsets in the reply (notes section 7): 3 u64, 3 u32 unpadded, 10 u64
    assert data[8:16] == h("0010000000000000")  # st_dev
    assert data[24:32] == h("0210000000000000")  # st_nlink
    assert data[32:36] == h("a4810000")  # st_mode
    assert data[36:40] == h("e8030000")  # st_uid
    assert data[40:44] == h("e9030000")  # st_gid
    assert data[44:52] == h("0610000000000000")  # st_rdev: no padding before it
    assert data[116:124] == h("0f10000000000000")  # st_ctim_nsec
    assert decode_reply(m.LstatRequest(b"/\x00"), data, byteorder="little") == reply


def test_statfs_reply_layout_and_sign_extended_fsid() -> None:
    reply = m.StatfsReply(0xEF53, 4096, 100, 50, 40, 1000, 900, 0xFFFFFFFFE69BBB74, 0, 255, 4096)
    data = encode_reply(m.StatfsRequest(b"/\x00"), reply, byteorder="little")
    assert data[:8] == h("00000000 58000000")
    assert len(data) == 8 + 88
    assert data[8:16] == h("53ef000000000000")  # f_type: ext4
    assert data[8 + 56 : 8 + 64] == h("74bb9be6ffffffff")  # f_fsid0, sign-extended int
    assert data[8 + 72 : 8 + 80] == h("ff00000000000000")  # f_namelen
    assert decode_reply(m.StatfsRequest(b"/\x00"), data, byteorder="little") == reply


def test_readlink_reply() -> None:
    # no NUL: the client terminates it
    check_reply(
        m.ReadlinkRequest(b"/l\x00", 4096),
        "00000000 07000000 0500 2f66696c65",
        m.ReadlinkReply(b"/file"),
    )


def test_xattr_replies() -> None:
    probe = m.LlistxattrRequest(0, b"/file\x00")
    check_reply(probe, "00000000 04000000 18000000", m.XattrSizeReply(24))
    listing = m.LlistxattrRequest(24, b"/file\x00")
    names = b"user.comment\x00user.empty\x00"
    check_reply(
        listing,
        "00000000 1a000000 1800 757365722e636f6d6d656e7400 757365722e656d70747900",
        m.XattrValueReply(names),
    )
    # the largest value a reply can carry: 8 + 2 + 65534 = the 65544-byte buffer
    big = m.LgetxattrRequest(65534, b"/f\x00", b"user.big")
    data = h("00000000 00000100 feff") + b"v" * 65534
    assert encode_reply(big, m.XattrValueReply(b"v" * 65534), byteorder="little") == data
    # a 65536-byte value with size 65536: QEMU sends T_SUCCESS with an empty string
    check_reply(
        m.LgetxattrRequest(65536, b"/f\x00", b"user.big"),
        "00000000 02000000 0000",
        m.XattrValueReply(b""),
    )


def test_version_reply() -> None:
    # only the low 32 bits are the generation; the high half is stack garbage
    check_reply(
        m.GetversionRequest(b"/\x00"),
        "00000000 08000000 78563412 fd7f0000",
        m.VersionReply(0x00007FFD12345678),
    )
    check_reply(
        m.GetversionRequest(b"/\x00"), "00000000 08000000 0000000000000000", m.VersionReply(0)
    )
