"""Security: attacks on the helper, one case per attack, a module per attack class
(spec: security.rst, limits.rst); what they share is in ``_common``.

Every case also passes through the runner's two global checks: the sentinels
outside the export are unread and unchanged, and the helper is alive (or, for
a fatal frame, exited without being killed by a signal).
"""

# Imported in the order of the sections they were (the suite's order of cases).
# isort: off
from . import (  # noqa: F401
    names,
    symlinks,
    races,
    magic_links,
    hard_links,
    special_files,
    credentials,
    device_nodes,
    xattrs,
    leaks,
    framing,
    resources,
    confinement,
)
# isort: on
