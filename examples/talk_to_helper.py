"""Talk to a proxy helper with ``ProxyClient``.

Starts a helper on a scratch export the way libvirt does (a socketpair, the
helper gets ``-f FD``), then performs a few operations and prints what came
back. Uses QEMU's helper when it is installed, else ours:

    sudo python examples/talk_to_helper.py [HELPER ...]

The helper chroots into the export, so this needs root.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from virtfs_proto.launcher import QEMU_HELPER, spawn_helper


def main(argv: list[str]) -> int:
    if argv:
        helper = argv
    elif os.access(QEMU_HELPER, os.X_OK):
        helper = [QEMU_HELPER]
    else:
        helper = [sys.executable, "-m", "virtfs_proto.cli", "helper"]
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp)
        (export / "hello.txt").write_text("hello from the host\n")
        with spawn_helper(helper, export, mode="fd", timeout=5) as h:
            c = h.client
            st = c.lstat("/")
            print(f"lstat /: mode {st.st_mode:o}, uid {st.st_uid}")
            c.mkdir("//docs", 0o750, uid=1000, gid=1000)
            st = c.lstat("//docs")
            print(f"mkdir //docs: mode {st.st_mode:o}, owner {st.st_uid}:{st.st_gid}")
            fd = c.open("//hello.txt", os.O_RDONLY)  # a real descriptor, via SCM_RIGHTS
            try:
                print(f"open //hello.txt: fd {fd}, reads {os.read(fd, 100)!r}")
            finally:
                os.close(fd)
            c.symlink("hello.txt", "//link")
            print(f"readlink //link: {c.readlink('//link')!r}")
            try:
                c.lstat("//missing")
            except FileNotFoundError as exc:
                print(f"lstat //missing: {type(exc).__name__} (errno {exc.errno})")
            # the helper is confined: .. at the root stays at the root
            same = c.lstat("/../..").st_ino == c.lstat("/").st_ino
            print(f"lstat /../..: same inode as /: {same}")
            statfs = c.statfs("/")
            print(f"statfs /: f_type {statfs.f_type:#x}, f_bsize {statfs.f_bsize}")
        print(f"helper exited with status {h.process.returncode}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
