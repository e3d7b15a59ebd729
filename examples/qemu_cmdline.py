"""Print the QEMU and helper command lines for an export, as a management tool would.

libvirt's ``<driver type='proxy'/>`` flow: make a ``socketpair()``, start
``virtfs-proxy-helper -f A`` on one end and start QEMU with the other end
inherited as ``-fsdev proxy,id=fs0,sock_fd=B``. Both ends stay open in the
tool until the two children have them. With ``--mode socket`` the helper
listens on a path instead and QEMU gets ``socket=PATH`` (and unlinks it once
connected).

``--check`` actually starts the helper on its end and talks to it over the
end QEMU would get, proving the hand-off works without starting QEMU::

    python examples/qemu_cmdline.py /srv/export --tag share
    sudo python examples/qemu_cmdline.py /srv/export --check

(The proxy fsdev was deprecated in QEMU 8.1 and removed in 9.2; QEMU 7.2 has it.)
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys

from virtfs_proto.client import ProxyClient
from virtfs_proto.launcher import QEMU_HELPER, helper_args


def qemu_args(
    fsdev_id: str, tag: str, *, sock_fd: int | None = None, path: str | None = None
) -> list[str]:
    """QEMU's options for a proxy-backed 9p device (``sock_fd`` or ``socket``)."""
    where = f"sock_fd={sock_fd}" if sock_fd is not None else f"socket={path}"
    return [
        "-fsdev",
        f"proxy,id={fsdev_id},{where}",
        "-device",
        f"virtio-9p-pci,fsdev={fsdev_id},mount_tag={tag}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="directory to export")
    parser.add_argument("--tag", default="share", help="9p mount tag (default: %(default)s)")
    parser.add_argument("--id", default="fs0", help="fsdev id (default: %(default)s)")
    parser.add_argument("--helper", default=QEMU_HELPER, help="helper command")
    parser.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    parser.add_argument("--mode", choices=["fd", "socket"], default="fd")
    parser.add_argument("--socket-path", default="/run/virtfs-proxy.sock")
    parser.add_argument("--check", action="store_true", help="start the helper and talk to it")
    args = parser.parse_args(argv)
    export = os.path.abspath(args.export)
    helper = shlex.split(args.helper)

    if args.mode == "socket":
        helper_cmd = helper + helper_args(
            export, socket_path=args.socket_path, uid=os.getuid(), gid=os.getgid()
        )
        qemu_cmd = [args.qemu, "...", *qemu_args(args.id, args.tag, path=args.socket_path)]
        print("# helper (listens, accepts one connection):")
        print(shlex.join(helper_cmd))
        print("# QEMU (connects, then unlinks the socket):")
        print(shlex.join(qemu_cmd))
        print_guest(args.tag)
        return 0

    helper_end, qemu_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # QEMU inherits its end: it must survive exec in the child.
    qemu_end.set_inheritable(True)
    helper_cmd = helper + helper_args(export, fd=helper_end.fileno())
    qemu_cmd = [args.qemu, "...", *qemu_args(args.id, args.tag, sock_fd=qemu_end.fileno())]
    print("# helper (inherits one end of the socketpair):")
    print(shlex.join(helper_cmd))
    print("# QEMU (inherits the other end):")
    print(shlex.join(qemu_cmd))
    print_guest(args.tag)
    if not args.check:
        helper_end.close()
        qemu_end.close()
        return 0

    # Play both parts: start the helper exactly as printed, and be QEMU on the other end.
    process = subprocess.Popen(helper_cmd, pass_fds=[helper_end.fileno()], stderr=subprocess.PIPE)
    helper_end.close()
    with ProxyClient(qemu_end, timeout=10) as client:
        fs = client.statfs("/")
        root = client.lstat("/")
        print(
            f"# check: helper answered over sock_fd={qemu_end.fileno()}:"
            f" root mode {oct(root.st_mode)}, f_type {fs.f_type:#x}"
        )
    _, err = process.communicate(timeout=10)
    if process.returncode != 0:
        print(
            f"# helper failed ({process.returncode}): {err.decode(errors='replace')}",
            file=sys.stderr,
        )
        return 1
    return 0


def print_guest(tag: str) -> None:
    """The matching mount command inside the guest."""
    print("# in the guest:")
    print(shlex.join(["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L", tag, "/mnt"]))


if __name__ == "__main__":
    sys.exit(main())
