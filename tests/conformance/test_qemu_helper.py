"""The suite against QEMU 7.2's virtfs-proxy-helper: exactly its known defects fail.

This is what proves that the cases can fail: each expected failure below is a
defect of QEMU's helper (spec/qemu-deviations.rst, the research notes), and the
test asserts that precisely these cases fail, in both socket modes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from virtfs_proto.kit.conformance import CASES, Report, Verdict, main, run

#: case name -> the QEMU 7.2 defect it demonstrates
QEMU_DEFECTS: dict[str, str] = {
    # golden vectors recording a defect that no helper may reproduce
    "wire.creds-uid0-gidN": "uid 0 / gid N leaves the serving thread with CAP_DAC_OVERRIDE only "
    "(setugid/resetugid, helper 283-340)",
    "wire.lgetxattr-negative": "negative xattr size: g_malloc((gsize)-1), GLib aborts (SIGTRAP)",
    "wire.readlink-negative": "negative readlink bufsize: g_malloc((gsize)-1), SIGTRAP",
    # credentials (notes §8)
    "security.creds.setgid_dir_root_then_user": "guest root in a setgid dir sends uid 0 / gid N; "
    "the next request with a non-zero uid makes setresuid fail on one thread: glibc SIGABRT",
    "security.creds.uid0_gidN_then_chown": "after uid 0 / gid N the effective set stays "
    "{DAC_OVERRIDE}: T_CHOWN fails with EPERM",
    "security.creds.minus_one_ids": "uid -1 takes the same path as uid 0 / gid N: capng_apply "
    "leaves only DAC_OVERRIDE effective, T_CHOWN then fails with EPERM",
    # special files (CVE-2023-2861 check runs after a blocking open; do_getversion plain open)
    "security.special.open_fifo": "T_OPEN of a FIFO blocks in open() before the ENXIO check",
    "security.special.open_fifo_wronly": "T_OPEN O_WRONLY of a FIFO blocks in open()",
    "security.special.open_fifo_via_symlink": "T_OPEN follows a symlink to a FIFO and blocks",
    "security.special.create_existing_fifo": "T_CREATE without O_EXCL opens an existing FIFO "
    "and blocks",
    "security.special.getversion_fifo": "do_getversion open(O_RDONLY)s a FIFO and blocks "
    "(no special-file check)",
    # special files under a race: QEMU opens first and checks the type afterwards
    "security.special_race.open_rdonly": "T_OPEN opens whatever the name is when open() "
    "runs, then refuses a non-regular file: a FIFO swapped in is opened (its writer wakes)",
    "security.special_race.open_wronly": "T_OPEN O_WRONLY opens a FIFO swapped in (its reader "
    "wakes) before the ENXIO check",
    "security.special_race.create_no_excl": "T_CREATE without O_EXCL of an existing name opens "
    "a FIFO swapped in before the ENXIO check",
    "security.special_race.getversion": "do_getversion open()s the name with no type check: a "
    "FIFO swapped in is opened",
    # device nodes: runs as root with CAP_MKNOD, and opens special files before checking
    "security.device.mknod_refused": "T_MKNOD c 10:232 as uid 0 / gid 0 makes the node "
    "(CAP_MKNOD stays effective for 0:0): the helper makes device nodes",
    "security.device.mknod_then_open_via_dir_fd": "the node it makes (c 10:232, mode 0666) "
    "opens read-write as /dev/kvm for an unprivileged process through a T_OPEN directory fd",
    "security.device.existing_node_never_opened": "T_OPEN/T_CREATE open() a device before the "
    "CVE-2023-2861 type check, and do_getversion opens it (ENOTTY from the ioctl)",
    # sizes (notes §10, §6)
    "security.xattr.get_65536_no_wrap": "a 65536-byte value: V9fsString u16 length wraps to 0, "
    "T_SUCCESS with an empty value (silent data loss)",
    "security.xattr.get_negative_size": "T_LGETXATTR size -1: g_malloc(SIZE_MAX), SIGTRAP",
    "security.xattr.list_negative_size": "T_LLISTXATTR negative size: g_malloc, SIGTRAP",
    "security.xattr.readlink_negative_bufsize": "T_READLINK bufsize -1: g_malloc, SIGTRAP",
    "security.xattr.set_size_beyond_value": "T_LSETXATTR size is passed to lsetxattr unchecked: "
    "heap bytes past the value are stored",
    "security.xattr.set_negative_size": "T_LSETXATTR size -1 is passed on as SIZE_MAX (E2BIG "
    "from the kernel), not refused with EINVAL",
    # information leak (notes §11)
    "security.leak.getversion_high_bits": "FS_IOC_GETVERSION stores 32 bits into an "
    "uninitialised u64: the high half is stack garbage (ASLR leak)",
    # framing (notes §9)
    "security.frame.close_before_reply": "no SIGPIPE handling: a client that hangs up before "
    "the reply kills the helper with SIGPIPE",
    "security.frame.close_before_fd_reply": "SIGPIPE on the sendmsg of an FD reply",
    # confinement (notes §8, §9)
    "security.confine.not_root": "runs as uid 0 after chroot",
    "security.confine.capabilities": "keeps CAP_SETUID/CAP_SETGID and CAP_MKNOD, and its RCU "
    "thread keeps every capability (capset acts on one thread)",
    "security.confine.bounding_set": "the RCU thread keeps the full bounding set",
    "security.confine.no_new_privs": "never sets PR_SET_NO_NEW_PRIVS",
    "security.confine.inherited_fds_closed": "closes no inherited descriptor: an fd to a host "
    "directory survives the chroot",
    # command line (helper.rst: numbers must be validated; QEMU uses atoi)
    "behaviour.cli.fd_not_a_number": "-f abc is atoi'd to fd 0 (standard input): the helper "
    "serves it until EOF and exits 0 instead of refusing",
    "behaviour.cli.uid_not_a_number": "-u x -g y are atoi'd to root: the helper binds and "
    "waits in accept() instead of refusing",
    # named socket: chown(path) after bind follows whatever the path names by then
    "security.socket.chown_follows_no_symlink": "chown(path) after bind() follows a symlink "
    "swapped in for the socket: any host file is chowned to the -u/-g owner",
    "security.socket.chown_only_its_own_socket": "chown(path) after bind() chowns whatever "
    "socket file was swapped in for its own",
    # magic links: /proc inside the export is followed (no RESOLVE_NO_MAGICLINKS)
    "security.magic.proc_self_fd_inherited": "with procfs in the export, "
    "/proc/self/fd/N/secret.txt through the inherited fd opens a file outside the export",
    "security.magic.proc_pid_root": "with procfs in the export, /proc/<pid>/root of a root "
    "process without capabilities leads to the host's /",
    # long paths (limits.rst): every path goes to one system call, which refuses PATH_MAX
    "security.names.long_path": "a 5000-byte path through missing directories is "
    "ENAMETOOLONG, not ENOENT: the path is passed whole to lstat()",
}
#: the requests of behaviour.long_path.*, each at 4100, 8200 and 60000 wire bytes
# fmt: off
LONG_PATH_OPS = (
    "open", "create", "mknod", "mkdir", "symlink", "link_from_long", "link_to_long", "lstat",
    "readlink", "statfs", "chmod", "chown", "truncate", "utime", "rename_from_long",
    "rename_to_long", "remove", "lgetxattr", "llistxattr", "lsetxattr", "lremovexattr",
    "getversion",
)
# fmt: on
QEMU_DEFECTS.update(
    {
        f"behaviour.long_path.{op}_{length}": "ENAMETOOLONG: the helper passes the whole path "
        "to one system call, which takes at most PATH_MAX (4096) bytes"
        for op in LONG_PATH_OPS
        for length in (4100, 8200, 60000)
    }
)

#: behaviours the spec lets a peer tolerate, reported as known deviations
QEMU_DEVIATIONS: dict[str, str] = {
    "security.names.embedded_nul_open": "embedded NUL truncates the name (C string)",
    "security.names.embedded_nul_mkdir": "embedded NUL truncates the name",
    "security.names.embedded_nul_remove": "embedded NUL truncates the name",
    "security.frame.trailing_bytes": "trailing payload bytes are read and ignored",
}

MODES = ("fd", "socket")


def expected_failures(mode: str) -> set[str]:
    """The defects whose cases run in ``mode`` (some cases run in one mode only)."""
    return {c.name for c in CASES if mode in c.modes} & set(QEMU_DEFECTS)


@pytest.fixture(scope="module")
def qemu_report(qemu_helper: str) -> Report:
    return run([qemu_helper], "both")


@pytest.mark.qemu_helper
@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_qemu_fails_exactly_its_known_defects(qemu_report: Report, mode: str) -> None:
    failed = qemu_report.failed_names(mode)
    unexpected = {
        r.name: r.detail
        for r in qemu_report.failures()
        if r.mode == mode and r.name not in QEMU_DEFECTS
    }
    assert not unexpected, f"cases failing on QEMU's helper with no known defect: {unexpected}"
    missing = expected_failures(mode) - failed
    assert not missing, f"QEMU defects no longer demonstrated: {sorted(missing)}"


@pytest.mark.qemu_helper
@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_qemu_known_deviations(qemu_report: Report, mode: str) -> None:
    devs = {
        r.name for r in qemu_report.results if r.mode == mode and r.verdict is Verdict.DEVIATION
    }
    assert devs == set(QEMU_DEVIATIONS)


@pytest.mark.qemu_helper
@pytest.mark.root
def test_every_failure_says_why(qemu_report: Report) -> None:
    for r in qemu_report.failures():
        assert r.detail, r.name


@pytest.mark.qemu_helper
@pytest.mark.root
def test_report_counts(qemu_report: Report) -> None:
    for mode in MODES:
        results = [r for r in qemu_report.results if r.mode == mode]
        groups = {g: sum(r.group == g for r in results) for g in ("wire", "behaviour", "security")}
        assert groups["wire"] >= 100
        assert groups["behaviour"] >= 30
        assert groups["security"] >= 50
    assert qemu_report.failed == sum(len(expected_failures(m)) for m in MODES)
    assert set(QEMU_DEFECTS) == expected_failures("fd") | expected_failures("socket")
    assert qemu_report.summary().startswith(
        f"{qemu_report.passed} passed, {qemu_report.failed} failed, "
    )


def expect_file(defects: dict[str, str]) -> str:
    """An ``--expect`` file, as a vendor would pin these defects."""
    return "# QEMU 7.2's virtfs-proxy-helper\n" + "".join(
        f"{name}  {why}\n" for name, why in defects.items()
    )


@pytest.mark.qemu_helper
@pytest.mark.root
def test_expect_file_pins_qemu_defects(
    qemu_helper: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--expect from QEMU_DEFECTS: exit 0; a defect left out, or a passing case
    listed, fails the run and the summary says which."""
    # three defects and a passing case, in one mode: quick
    only = ["security.confine.not_root", "security.confine.no_new_privs"]
    only += ["behaviour.cli.fd_not_a_number", "behaviour.open_read"]
    argv = ["--helper", qemu_helper, "--mode", "fd", "--expect", str(tmp_path / "qemu.expect")]
    argv += [a for name in only for a in ("--only", name)]
    (tmp_path / "qemu.expect").write_text(expect_file(QEMU_DEFECTS))
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == (
        "1 passed, 3 failed, 0 tolerated, 0 not applicable; "
        "3 expected failures, 0 unexpected failures, 0 unexpected passes"
    )
    assert (
        f"[fd] security.confine.no_new_privs: {QEMU_DEFECTS['security.confine.no_new_privs']}"
        in out
    )

    fewer = {k: v for k, v in QEMU_DEFECTS.items() if k != "security.confine.no_new_privs"}
    (tmp_path / "qemu.expect").write_text(expect_file(fewer))
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "1 unexpected failures:\n  [fd] security.confine.no_new_privs: " in out
    assert out.endswith("2 expected failures, 1 unexpected failures, 0 unexpected passes\n")

    more = {**QEMU_DEFECTS, "behaviour.open_read": "a defect that is not there"}
    (tmp_path / "qemu.expect").write_text(expect_file(more))
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "[fd] behaviour.open_read: pass; expected: a defect that is not there" in out
    assert out.endswith("3 expected failures, 0 unexpected failures, 1 unexpected passes\n")
