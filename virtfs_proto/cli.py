"""The ``virtfs-proto`` command: sub-commands dispatch to their modules.

``decode``/``encode`` work anywhere; ``capture``, ``helper``,
``conformance`` and ``trace`` need Linux and are imported only when asked for.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, TextIO

from .constants import ByteOrder
from .errors import ProxyProtocolError
from .jsonform import decode_exchange, encode_exchange

#: Sub-commands implemented elsewhere: name -> (module, help). Each module has
#: ``main(argv: list[str]) -> int`` and parses its own options.
DELEGATED: dict[str, tuple[str, str]] = {
    "helper": ("virtfs_proto.server.main", "run the reference virtfs-proxy-helper"),
    "conformance": ("virtfs_proto.conformance", "check a helper binary against the spec"),
    "capture": ("virtfs_proto.capture", "record golden vectors from a real helper"),
    "trace": ("virtfs_proto.trace", "man-in-the-middle tracer between QEMU and a helper"),
}


def _lines(stream: TextIO) -> Iterable[tuple[int, Any]]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, exc


def _decode(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``virtfs-proto`` console script."""
    args_list = sys.argv[1:] if argv is None else argv
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


if __name__ == "__main__":
    sys.exit(main())
