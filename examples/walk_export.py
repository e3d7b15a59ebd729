"""Walk an export through QEMU's helper and print ``ls -l``-style lines.

The proxy protocol has no readdir: QEMU opens a directory (``T_OPEN`` with
``O_DIRECTORY``), receives the descriptor and reads the entries itself. This
does the same (``os.listdir`` on the received fd), then ``lstat``s and
``readlink``s every entry *through the helper*, so what is printed is what a
guest would see::

    sudo python examples/walk_export.py /srv/export
    sudo python examples/walk_export.py --helper "python -m virtfs_proto.server" --mode socket /srv

The helper chroots into the export, so this needs root.
"""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
import time

from virtfs_proto.client import ProxyClient, StatResult
from virtfs_proto.launcher import QEMU_HELPER, spawn_helper


def ls_line(path: str, st: StatResult, target: str | None) -> str:
    """One ``ls -l`` line: mode, links, owner, group, size (or device), mtime, name."""
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        size = f"{os.major(st.st_rdev)}, {os.minor(st.st_rdev)}"
    else:
        size = str(st.st_size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
    name = path if target is None else f"{path} -> {target}"
    return (
        f"{stat.filemode(st.st_mode)} {st.st_nlink:>3} {st.st_uid:>5} {st.st_gid:>5}"
        f" {size:>10} {when} {name}"
    )


def walk(client: ProxyClient, path: str = "/", depth: int = 64) -> list[str]:
    """``ls -l`` lines for ``path`` and everything below it, depth first, sorted by name."""
    lines = []
    fd = client.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    for name in names:
        child = f"{path.rstrip('/')}/{name}"
        st = client.lstat(child)
        target = client.readlink(child) if st.is_symlink() else None
        lines.append(ls_line(child, st, target))
        if st.is_dir() and depth > 0:
            lines.extend(walk(client, child, depth - 1))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="directory to export")
    parser.add_argument(
        "--helper", default=QEMU_HELPER, help="helper command (default: %(default)s)"
    )
    parser.add_argument("--mode", choices=["fd", "socket"], default="fd")
    args = parser.parse_args(argv)
    with spawn_helper(shlex.split(args.helper), args.export, args.mode, timeout=30) as helper:
        root = helper.client.lstat("/")
        print(ls_line("/", root, None))
        for line in walk(helper.client):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
