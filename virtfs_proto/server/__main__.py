"""``python -m virtfs_proto.server``: the helper, until the top-level CLI dispatches to it."""

import sys

from .main import main

sys.exit(main(sys.argv[1:]))
