"""Sphinx configuration for the virtfs-proto site (``sphinx-build -W docs docs/_build``)."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import virtfs_proto  # noqa: E402
from virtfs_proto.kit import vectors_dir  # noqa: E402

project = "virtfs-proto"
author = "the virtfs-proto authors"
copyright = "2026, the virtfs-proto authors"
release = virtfs_proto.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "virtfs_autospec",
]

# spec/ lives at the top of the repository (it is the normative text and is
# read on its own); docs/spec is a symlink to it so the site includes it.
# The golden vectors are package data (virtfs_proto/kit/vectors/).
virtfs_vectors_dir = str(vectors_dir())

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"
language = "en"
pygments_style = "sphinx"
highlight_language = "none"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
autoclass_content = "class"

# Plain ``>>>`` blocks in the pages are doctests too (tests/test_docs.py runs
# them; ``sphinx-build -b doctest docs docs/_build/doctest`` does as well).
doctest_test_doctest_blocks = "default"

html_theme = "alabaster"
html_title = f"virtfs-proto {release}"
html_theme_options = {
    "description": "QEMU's 9p proxy protocol, specified and implemented",
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_show_sourcelink = False
