"""``python -m virtfs_proto.conformance --helper CMD ...``."""

import sys

from .runner import main

sys.exit(main(sys.argv[1:]))
