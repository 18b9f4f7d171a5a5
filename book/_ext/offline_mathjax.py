"""Sphinx extension: serve MathJax from the site itself instead of a CDN, when possible.

Pages with math (``$...$`` in a notebook) load MathJax. From a CDN that fails
on the offline machines that build and test this site, and every such page
then logs a console error (tests/test_site.py finds it in headless Chromium).
The ``sphinx-mathjax-offline`` package (pinned in the requirements) ships
MathJax 3.2.2 and copies it into ``_static/mathjax``; this wrapper enables it
and, when the package is missing, keeps the default CDN MathJax so that the
build itself still succeeds.
"""

from __future__ import annotations

import importlib
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)


def setup(app: Any) -> dict[str, Any]:
    try:
        importlib.import_module("sphinx-mathjax-offline")
    except ImportError:
        logger.info("sphinx-mathjax-offline is not installed: pages with math load MathJax from a CDN")
    else:
        app.setup_extension("sphinx-mathjax-offline")
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
