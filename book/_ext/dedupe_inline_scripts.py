"""Sphinx extension: drop inline <script> blocks that appear twice on a page.

With Sphinx 7.4, an inline script that an extension registers after the HTML
builder has started (``app.add_js_file(None, body=...)``, as sphinx-thebe and
sphinx-togglebutton do) reaches the page twice: once with the file name
``None`` and once, re-read from the registry, with ``''``. Sphinx removes
duplicates by comparing file names, and ``None != ''``, so both stay. On every
page the browser then runs ``const THEBE_JS_URL = ...`` twice and reports
``Uncaught SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``
(tests/test_site.py finds it in headless Chromium). This keeps the first copy
of each script, comparing ``None`` and ``''`` as the same name.
"""

from __future__ import annotations

from typing import Any


def _key(script: Any) -> tuple:
    name = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {}) or {}
    return (str(name), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    kept = []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    if len(kept) != len(scripts):
        context["script_files"] = kept


def setup(app: Any) -> dict[str, Any]:
    # late priority: after the themes have added their page-specific scripts
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
