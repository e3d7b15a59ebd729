"""``python -m virtfs_proto.kit.conformance --helper CMD ...``."""

import sys

from ...cli import main

sys.exit(main(["conformance", *sys.argv[1:]]))
