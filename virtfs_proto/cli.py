"""The ``virtfs-proto`` command: sub-commands dispatch to their modules.

``decode``/``encode`` work anywhere; ``capture``, ``helper``,
``conformance`` and ``trace`` need Linux and are imported only when asked for.

No traceback reaches the user: every sub-command ends with one line on
stderr and a non-zero status on an error it could not handle, Ctrl-C (130)
or SIGTERM (143); on either signal every process the command started is
killed first, then cleanup (``finally``) runs as the exception unwinds.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterable
from types import FrameType

from .errors import HelperStartError, ProxyProtocolError

TYPE_CHECKING = False  # typing is not imported at run time: it costs the helper's start-up
if TYPE_CHECKING:
    import argparse
    from typing import Any, Final, TextIO

    from .constants import ByteOrder

# Imported by the sub-commands that need them, not here: `virtfs-proto helper`
# starts as fast as the helper's own imports allow (no codec, no argparse).

#: Sub-commands implemented elsewhere: name -> (module, help). Each module has
#: ``main(argv: list[str]) -> int`` and parses its own options.
DELEGATED: dict[str, tuple[str, str]] = {
    "helper": ("virtfs_proto.server.main", "run the reference virtfs-proxy-helper"),
    "conformance": ("virtfs_proto.kit.conformance", "check a helper binary against the spec"),
    "capture": ("virtfs_proto.kit.capture", "record golden vectors from a real helper"),
    "trace": ("virtfs_proto.trace", "man-in-the-middle tracer between QEMU and a helper"),
}


def _lines(stream: TextIO) -> Iterable[tuple[int, Any]]:
    import json

    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc


def _decode(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    import json

    from .jsonform import decode_exchange

    bad = 0
    for number, obj in _lines(stdin):
        if (
            isinstance(obj, json.JSONDecodeError)
            or not isinstance(obj, dict)
            or not isinstance(obj.get("request"), str)
        ):
            print(f'line {number}: expected {{"request": hex, "reply": hex}}', file=sys.stderr)
            bad += 1
            continue
        reply = obj.get("reply")
        out = decode_exchange(
            obj["request"],
            reply if isinstance(reply, str) else None,
            byteorder=args.byteorder,
            lenient=args.lenient,
        )
        bad += sum(1 for part in out.values() if "error" in part)
        stdout.write(json.dumps(out) + "\n")
    return 1 if bad else 0


def _encode(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    import json

    from .jsonform import encode_exchange

    bad = 0
    for number, obj in _lines(stdin):
        try:
            if isinstance(obj, json.JSONDecodeError):
                raise ValueError(str(obj))
            out = encode_exchange(obj, byteorder=args.byteorder)
        except (ProxyProtocolError, ValueError) as exc:
            print(f"line {number}: {exc}", file=sys.stderr)
            bad += 1
            continue
        stdout.write(json.dumps(out) + "\n")
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    """The ``virtfs-proto`` parser (delegated sub-commands parse their own options)."""
    import argparse
    from importlib import metadata  # 30 ms of imports: only where --version can be asked

    parser = argparse.ArgumentParser(
        prog="virtfs-proto",
        description="QEMU 9p proxy protocol: codec, reference helper and conformance kit.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('virtfs-proto')}"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
        "decode": _decode,
        "encode": _encode,
    }
    for name, text in (
        ("decode", "JSON Lines of hex exchanges on stdin -> decoded JSON Lines on stdout"),
        ("encode", "decoded JSON Lines on stdin -> hex exchanges on stdout"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--byteorder",
            choices=["little", "big"],
            default=None,
            help="byte order of the wire (default: this host's)",
        )
        if name == "decode":
            p.add_argument(
                "--lenient",
                action="store_true",
                help="accept bytes after a payload's last field, as QEMU's helper does",
            )
        p.set_defaults(handler=handlers[name])
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised like :class:`KeyboardInterrupt` so that ``finally`` blocks run."""


#: Exit statuses as a shell reports a death by that signal (128 + number).
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT
EXIT_TERMINATED: Final = 128 + signal.SIGTERM
#: Set to see the traceback of an unexpected error instead of its one line.
DEBUG_ENV: Final = "VIRTFS_PROTO_DEBUG"


def stop_children() -> None:
    """SIGKILL every process this one started; a child that leads its own process
    group (a helper started in a session of its own) is killed with its whole group."""
    if not sys.platform.startswith("linux"):
        return
    from .procfs import children

    try:
        pids = children(os.getpid())
    except OSError:  # no /proc: the helper, chrooted into its export, starts no process
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Helpers first: unwinding may wait for them. One unwinding is enough; a
    # second signal during cleanup only kills what cleanup might have started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_children())
    stop_children()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _dispatch(args_list: list[str]) -> int:
    if args_list and args_list[0] in DELEGATED:
        module_name = DELEGATED[args_list[0]][0]
        module = importlib.import_module(module_name)
        result: int = module.main(args_list[1:])
        return result
    args = build_parser().parse_args(args_list)
    byteorder: ByteOrder | None = getattr(args, "byteorder", None)
    args.byteorder = byteorder
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
    return handler(args, sys.stdin, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``virtfs-proto`` console script."""
    args_list = sys.argv[1:] if argv is None else argv
    prog = "virtfs-proto"
    if args_list and args_list[0] in (*DELEGATED, "decode", "encode"):
        prog += f" {args_list[0]}"
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, _on_signal)
        except ValueError:  # not the main thread (threading is not imported to ask)
            break
    try:
        status = _dispatch(args_list)
        sys.stdout.flush()  # a closed stdout shows here, not at interpreter exit
        return status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader of stdout went away (`| head`): as Python's docs advise, point
        # stdout at /dev/null so that the flush at exit does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except HelperStartError as exc:
        print(f"{prog}: {exc.one_line()}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be opened or written, say
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{prog}: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 to see where)",
            file=sys.stderr,
        )
        return 1
    finally:
        for sig, handler in previous.items():  # main() may run inside another program
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
