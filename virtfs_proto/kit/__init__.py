"""The conformance kit's home: what a user needs to judge a helper, shipped in the package.

It holds the golden vectors (``vectors/*.json``, package data, the format
of ``spec/vectors.rst``), the export fixture
(:mod:`~virtfs_proto.kit.fixture`), the vector runner
(:mod:`~virtfs_proto.kit.recording`, over the raw reads of
:mod:`~virtfs_proto.kit.raw`), ``capture`` (:mod:`~virtfs_proto.kit.capture`)
and the conformance suite (:mod:`~virtfs_proto.kit.conformance`). The vectors
are read through :mod:`importlib.resources`, so an installed wheel finds the
same files as a checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def vectors_dir() -> Path:
    """The directory of the packaged golden vectors (``virtfs_proto/kit/vectors/``).

    The kit replays and lists the vectors by path, so the package must be
    installed as files (wheels and editable installs are); a zipped import
    raises ``RuntimeError`` rather than finding no vectors.
    """
    where = resources.files(__name__) / "vectors"
    if not isinstance(where, Path):
        raise RuntimeError(f"virtfs_proto.kit is not installed as files ({where!r}): reinstall it")
    return where
