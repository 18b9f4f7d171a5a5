"""Build the course site from *executed* notebooks, and check it the way a reader sees it.

The notebooks in git carry no outputs. ``python -m helpers.book run`` executes
the workflow notebooks (``notebooks/NN_*.ipynb``) with papermill into
``_build/notebooks/``. :func:`build` assembles a staging copy of the book
(``_config.yml``, ``_toc.yml``, ``book/`` and those executed notebooks),
executes the concept chapters that are notebooks (``book/**/*.ipynb``, whose
figures and tables are computed from the model and the data) with papermill
inside the staging copy, and runs ``jupyter-book build`` on it with warnings
treated as errors. So the site shows real outputs and figures, and never runs
a workflow notebook a second time.

:func:`check` then looks at the built HTML: every local ``href``/``src``
resolves (:func:`check_links`), and, when Chromium is installed, every page
loads in headless Chromium without console errors or broken images, the
sidebar navigation works, and screenshots are saved (:func:`check_in_browser`).

    python -m helpers.site build [--executed _build/notebooks] [--out _build/site] [--no-cache]
    python -m helpers.site check [--html _build/site/_build/html] [--screenshots _build/screenshots] [--no-browser]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import REPO_DIR
from .errors import BookError, RunError
from .errors import report as report_error

STAGE_ITEMS = ("_config.yml", "_toc.yml", "book", "params")  # params/: literalincluded by the reference pages
#: Where executed concept notebooks are kept between builds (keyed by their inputs' hash).
CACHE_DIR = REPO_DIR / "_build" / "book-cache"
#: The pages the browser check photographs: (file name, page, CSS selector to scroll to or None).
SCREENSHOTS = (
    ("landing.png", "book/intro.html", None),
    ("concept-architecture.png", "book/concepts/architecture.html", ".cell_output img"),
    ("notebook-01-figure.png", "notebooks/01_dataset.html", ".cell_output img"),
)


# ----------------------------------------------------------------------------------------------
# staging


def toc_notebooks(toc: Path) -> list[str]:
    """Stems of the workflow notebooks (``notebooks/NN_name``) that ``_toc.yml`` lists."""
    return [f for f in toc_files(toc) if f.startswith("notebooks/")]


def toc_files(toc: Path) -> list[str]:
    """Every ``file:`` entry of ``_toc.yml`` (and its ``root``), in order, without suffix."""
    import yaml

    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                f = node.get(key)
                if isinstance(f, str):
                    found.append(f)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(toc.read_text(encoding="utf-8")))
    return found


def book_notebooks(root: Path) -> list[Path]:
    """The concept chapters that are notebooks: ``book/**/*.ipynb`` under ``root``, sorted."""
    return sorted(p for p in (root / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _copy_without_widgets(src: Path, dst: Path) -> None:
    """Copy an executed notebook, replacing live widgets (tqdm bars) by their text.

    A static site cannot run ipywidgets (their scripts would come from a CDN
    this book must not need); tqdm's widget carries the finished bar as
    ``text/plain``, which is what the page then shows.
    """
    import nbformat

    nb = nbformat.read(src, as_version=4)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                data.pop(WIDGET_MIME)
                if not data:
                    data["text/plain"] = ""
    nbformat.write(nb, dst)


def stage(executed: Path, stage_dir: Path, repo: Path = REPO_DIR) -> Path:
    """Copy the book sources and the executed workflow notebooks into ``stage_dir``."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    for item in STAGE_ITEMS:
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, stage_dir / item, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            shutil.copy2(src, stage_dir / item)
    (stage_dir / "notebooks").mkdir()
    missing = []
    for stem in toc_notebooks(repo / "_toc.yml"):
        name = Path(stem).name + ".ipynb"
        src = executed / name
        if not src.exists():
            missing.append(name)
            continue
        _copy_without_widgets(src, stage_dir / "notebooks" / name)
    if missing:
        raise BookError(
            f"executed notebooks missing in {executed}: {', '.join(missing)}. "
            "Run `python -m helpers.book run` (or `make book`) first."
        )
    return stage_dir


# ----------------------------------------------------------------------------------------------
# executing the concept notebooks


def _inputs_hash(notebook: Path, repo: Path = REPO_DIR) -> str:
    """Hash of what a concept notebook's outputs depend on: itself and the ``helpers`` package."""
    digest = hashlib.sha256(notebook.read_bytes())
    for path in sorted((repo / "helpers").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(repo)).encode())
            digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def execute_book_notebooks(
    stage_dir: Path, repo: Path = REPO_DIR, kernel: str = "python3", cache_dir: Path | None = CACHE_DIR
) -> list[tuple[str, str, float]]:
    """Execute every ``book/**/*.ipynb`` of the staging copy in place with :func:`helpers.book.execute`.

    Each runs in a fresh ``kernel`` whose working directory is the notebook's
    own folder (in the staging copy, so nothing is written into the
    repository) and which imports ``helpers`` from the repository. An executed
    notebook is kept in ``cache_dir`` under the hash of its source and of
    ``helpers/``; an unchanged notebook is copied from there instead of run
    again (``cache_dir=None`` always runs). Returns ``(notebook, "ran" |
    "cached", seconds)`` per notebook and raises :class:`RunError` naming the
    cell when one fails.
    """
    from . import book

    results = []
    notebooks = book_notebooks(stage_dir)
    if not notebooks:
        return results
    book.ensure_kernel(kernel)
    for nb_path in notebooks:
        rel = nb_path.relative_to(stage_dir)
        src = repo / rel
        key = _inputs_hash(src if src.exists() else nb_path, repo)
        cached = cache_dir / rel.parent / f"{nb_path.stem}.{key}.ipynb" if cache_dir else None
        t0 = time.perf_counter()
        if cached is not None and cached.is_file():
            shutil.copy2(cached, nb_path)
            results.append((str(rel), "cached", 0.0))
            continue
        try:
            book.execute(nb_path, nb_path, kernel=kernel)
        except RunError as exc:
            raise RunError(f"concept chapter {rel} failed while building the site.\n{exc}") from exc.__cause__
        seconds = time.perf_counter() - t0
        results.append((str(rel), "ran", round(seconds, 1)))
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            for old in cached.parent.glob(f"{nb_path.stem}.*.ipynb"):
                old.unlink()
            shutil.copy2(nb_path, cached)
    return results


# ----------------------------------------------------------------------------------------------
# building


def build(
    executed: Path | None = None, out: Path | None = None, strict: bool = True, cache_dir: Path | None = CACHE_DIR
) -> Path:
    """Stage the book, execute its concept notebooks, build the site; return the folder holding ``index.html``.

    ``strict`` (the default) passes ``-W -n --keep-going`` to jupyter-book:
    every Sphinx warning (a broken cross-reference, a missing image, a
    notebook output it cannot render) fails the build, and all of them are
    reported at once.
    """
    executed = executed or REPO_DIR / "_build" / "notebooks"
    out = out or REPO_DIR / "_build" / "site"
    t_start = time.perf_counter()
    src = stage(executed, out.parent / f"{out.name}-src")
    for name, how, seconds in execute_book_notebooks(src, cache_dir=cache_dir):
        print(f"  {name}: {f'executed in {seconds:.1f} s' if how == 'ran' else 'unchanged, from the cache'}")
    # --all: Sphinx's incremental build would keep pages whose own source did not change, with a stale
    # sidebar when another page's title changed; a full build takes seconds
    cmd = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(src),
        "--path-output",
        str(out),
        "--all",
    ]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RunError(f"jupyter-book build failed (warnings count as errors):\n{tail}")
    html = out / "_build" / "html"
    print(
        f"site built in {time.perf_counter() - t_start:.1f} s (jupyter-book {time.perf_counter() - t0:.1f} s): "
        f"{html / 'index.html'}"
    )
    return html


# ----------------------------------------------------------------------------------------------
# checking: links


class _Refs(html.parser.HTMLParser):
    """Collects ``href``/``src`` values, element ids and ``<img>`` tags of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])  # type: ignore[arg-type]
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and a.get("rel") in ("preconnect", "dns-prefetch")):
                self.refs.append((key, a[key]))  # type: ignore[arg-type]
        if tag == "img":
            self.images.append(a)


def _parse(page: Path) -> _Refs:
    parser = _Refs()
    parser.feed(page.read_text(encoding="utf-8", errors="replace"))
    return parser


def html_pages(html_dir: Path) -> list[Path]:
    """Every ``.html`` file of a built site, except Sphinx's own ``_static``/``_sources``."""
    return sorted(
        p
        for p in html_dir.rglob("*.html")
        if not {"_static", "_sources", "_images"} & set(p.relative_to(html_dir).parts)
    )


def check_links(html_dir: Path) -> list[str]:
    """Every local ``href``/``src`` of every page must name an existing file (and anchor).

    External links (``http:``, ``https:``, ``mailto:``, ``data:``, ...) are
    not followed: the machines that build the book are offline. A fragment
    (``page.html#section``) must be an ``id`` on the target page. Returns one
    line per broken reference, ``[]`` when all resolve.
    """
    html_dir = Path(html_dir)
    parsed: dict[Path, _Refs] = {}

    def page(path: Path) -> _Refs:
        if path not in parsed:
            parsed[path] = _parse(path)
        return parsed[path]

    broken = []
    for path in html_pages(html_dir):
        for attr, ref in page(path).refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or ref.startswith(("//", "javascript:")):
                continue
            target = path if not parts.path else (path.parent / unquote(parts.path))
            if parts.path.endswith("/"):
                target = target / "index.html"
            where = f"{path.relative_to(html_dir)}: {attr}={ref!r}"
            try:
                target.resolve().relative_to(html_dir.resolve())
            except ValueError:
                broken.append(f"{where} points outside the site")
                continue
            if not target.is_file():
                broken.append(
                    f"{where}: {target.relative_to(html_dir) if target.is_relative_to(html_dir) else target}"
                    " does not exist"
                )
                continue
            frag = unquote(parts.fragment)
            if frag and target.suffix == ".html" and frag not in page(target).ids:
                broken.append(f"{where}: no id {frag!r} on {target.relative_to(html_dir)}")
    return broken


def images_without_alt(html_dir: Path) -> dict[str, list[str]]:
    """Pages whose ``<img>`` tags lack a descriptive ``alt`` (missing, empty, or just a file name)."""
    out: dict[str, list[str]] = {}
    for path in html_pages(Path(html_dir)):
        bad = []
        for img in _parse(path).images:
            alt = (img.get("alt") or "").strip()
            src = img.get("src") or ""
            if not alt or alt == src or alt.lower().endswith((".png", ".jpg", ".jpeg", ".svg", ".gif")):
                bad.append(f"{src} (alt={alt!r})")
        if bad:
            out[str(path.relative_to(html_dir))] = bad
    return out


# ----------------------------------------------------------------------------------------------
# checking: a real browser


@dataclass
class Browser:
    """Where the Chromium binary and its matching chromedriver are."""

    chromium: str
    chromedriver: str


def find_browser() -> Browser | None:
    """Chromium and chromedriver from ``$CHROMIUM``/``$CHROMEDRIVER`` or the ``PATH``; None if either is missing.

    ``tools/install-browser.sh`` installs Debian's ``chromium`` and ``chromium-driver``.
    """
    chromium = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver or not Path(chromium).exists() or not Path(driver).exists():
        return None
    return Browser(chromium, driver)


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on an ephemeral localhost port in a thread; yields the base URL."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


#: Headless flags for Chromium as root in a container (see PLATFORM.md).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
    "--hide-scrollbars",
)


@dataclass
class BrowserReport:
    """What headless Chromium saw on every page of the site."""

    pages: list[str] = field(default_factory=list)
    console_errors: dict[str, list[str]] = field(default_factory=dict)
    broken_images: dict[str, list[str]] = field(default_factory=dict)
    images_seen: int = 0
    sidebar: str = ""
    sidebar_ok: bool = False
    screenshots: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    browser_version: str = ""
    solutions_checked: int = 0  # hidden answers seen: hide-cell cells and dropdowns
    solutions_visible: dict[str, list[str]] = field(default_factory=dict)  # shown before any click
    solutions_not_revealed: dict[str, list[str]] = field(default_factory=dict)  # still hidden after a click

    @property
    def ok(self) -> bool:
        """No console error, no broken image, every solution hidden until clicked, the sidebar click landed."""
        return (
            not self.console_errors
            and not self.broken_images
            and not self.solutions_visible
            and not self.solutions_not_revealed
            and self.sidebar_ok
        )

    def __str__(self) -> str:
        lines = [
            f"{len(self.pages)} pages loaded in {self.browser_version} in {self.seconds:.1f} s; "
            f"{self.images_seen} images checked",
            f"sidebar navigation: {'ok' if self.sidebar_ok else 'FAILED'} ({self.sidebar})",
        ]
        lines.append(f"{self.solutions_checked} hidden solutions checked (hidden until clicked, shown after)")
        for title, problems in (
            ("console errors", self.console_errors),
            ("broken images", self.broken_images),
            ("solutions visible without a click", self.solutions_visible),
            ("solutions a click did not show", self.solutions_not_revealed),
        ):
            if problems:
                lines.append(f"{title}:")
                lines += [f"  {page}: {msg}" for page, msgs in problems.items() for msg in msgs]
            else:
                lines.append(f"{title}: none")
        lines += [f"screenshot: {p}" for p in self.screenshots]
        return "\n".join(lines)


# Chromium asks every site for /favicon.ico; this book declares none, and the 404 is not a page error.
_IGNORED_CONSOLE = ("favicon.ico",)

_IMAGES_JS = """
const imgs = Array.from(document.images);
for (const img of imgs) { img.loading = 'eager'; }
return imgs.map(i => [i.currentSrc || i.src, i.complete, i.naturalWidth]);
"""


def _wait_images(driver, timeout: float = 10.0) -> list[list]:
    """Scroll every image into view, wait until all have finished loading; return [src, complete, width]."""
    deadline = time.monotonic() + timeout
    driver.execute_script("for (const i of document.images) { i.scrollIntoView(); }")
    while True:
        state = driver.execute_script(_IMAGES_JS)
        if all(done for _, done, _ in state) or time.monotonic() > deadline:
            driver.execute_script("window.scrollTo(0, 0);")
            return state
        time.sleep(0.1)


def open_chromium(browser: Browser, profile_dir: str):
    """A headless Chromium WebDriver with the book's flags and a fresh profile (the site and demo checks use it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser.chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # both paths given: selenium never runs Selenium Manager, so nothing is downloaded
    return webdriver.Chrome(options=options, service=Service(browser.chromedriver))


def wait_loaded(driver, timeout: float = 15.0) -> None:
    """Wait until the page's ``document.readyState`` is complete; a :class:`RunError` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while driver.execute_script("return document.readyState") != "complete":
        if time.monotonic() > deadline:
            raise RunError(f"{driver.current_url} did not finish loading in {timeout:.0f} s")
        time.sleep(0.05)


# Hidden answers: a `hide-cell` notebook cell (input and output collapsed in <details>) or a
# `{dropdown}` block. For each: [kind, is its answer visible?, the answer's first characters].
_SOLUTIONS_JS = """
// Chromium keeps a closed <details>' content laid out but unrendered (content-visibility), so ask
// checkVisibility() and whether any text is rendered, not only for boxes
const shown = el => !!el && (el.checkVisibility ? el.checkVisibility({checkVisibilityCSS: true})
                                                : el.getClientRects().length > 0)
                    && (el.innerText || '').trim().length > 0;
const out = [];
for (const d of document.querySelectorAll('details')) {
  const cell = d.closest('.tag_hide-cell');
  if (!cell && !d.classList.contains('sd-dropdown')) continue;
  const body = cell ? (cell.querySelector('.cell_output') || cell.querySelector('.cell_input'))
                    : d.querySelector('.sd-summary-content');
  if (!body) continue;
  out.push([cell ? 'hide-cell' : 'dropdown', shown(body), (body.innerText || '').trim().slice(0, 60)]);
}
return out;
"""
_OPEN_ALL_JS = """
for (const d of document.querySelectorAll('details')) {
  if (d.closest('.tag_hide-cell') || d.classList.contains('sd-dropdown')) { d.querySelector('summary').click(); }
}
"""


def _check_solutions(driver, rel: str, report: BrowserReport) -> None:
    """Every hidden answer on the page is invisible until its summary is clicked, and visible after."""
    before = driver.execute_script(_SOLUTIONS_JS)
    if not before:
        return
    report.solutions_checked += len(before)
    visible = [f"{kind}: {text!r}" for kind, shown, text in before if shown]
    if visible:
        report.solutions_visible[rel] = visible
    driver.execute_script(_OPEN_ALL_JS)
    time.sleep(0.2)
    after = driver.execute_script(_SOLUTIONS_JS)
    hidden = [f"{kind}: {text!r}" for kind, shown, text in after if not shown]
    if hidden:
        report.solutions_not_revealed[rel] = hidden


def _visit(driver, base: str, rel: str, report: BrowserReport) -> None:
    """Load one page; record its broken images and its SEVERE console messages in ``report``."""
    driver.get(base + rel)
    wait_loaded(driver)
    state = _wait_images(driver)
    report.images_seen += len(state)
    broken = [src for src, done, width in state if not (done and width > 0)]
    errors = [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry.get("level") == "SEVERE" and not any(s in entry.get("message", "") for s in _IGNORED_CONSOLE)
    ]
    report.pages.append(rel)
    _check_solutions(driver, rel, report)
    if broken:
        report.broken_images[rel] = broken
    if errors:
        report.console_errors[rel] = errors


def _click_sidebar(driver, base: str) -> tuple[bool, str]:
    """On the landing page, click the sidebar link of a concept chapter; did the browser land there?

    Returns ``(ok, what happened)``: ok when the URL is the link's and the page's heading is the
    link's text.
    """
    from selenium.webdriver.common.by import By

    driver.get(base + "book/intro.html")
    wait_loaded(driver)
    links = [
        a
        for a in driver.find_elements(
            By.CSS_SELECTOR, "nav.bd-docs-nav a.reference.internal, .bd-sidenav a.reference.internal"
        )
        if a.is_displayed() and "concepts/" in (a.get_attribute("href") or "")
    ]
    if not links:
        return False, "no visible sidebar link to a concept chapter on book/intro.html"
    link = links[0]
    href, text = link.get_attribute("href"), link.text.strip()
    link.click()
    deadline = time.monotonic() + 10
    while driver.current_url.split("#")[0] != href.split("#")[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_loaded(driver)
    heading = driver.find_element(By.CSS_SELECTOR, "article.bd-article h1").text.strip()
    landed = driver.current_url.split("#")[0] == href.split("#")[0]
    ok = landed and heading.rstrip("#¶ ").strip() == text
    return ok, (f"clicked {text!r} -> {driver.current_url.replace(base, '')}, page heading {heading.rstrip('#¶ ')!r}")


def _screenshots(driver, base: str, html_dir: Path, screenshots_dir: Path) -> list[Path]:
    """Photograph the pages of :data:`SCREENSHOTS` that the site has, scrolled to their selector."""
    from selenium.webdriver.common.by import By

    screenshots_dir.mkdir(parents=True, exist_ok=True)
    taken = []
    for name, rel, selector in SCREENSHOTS:
        if not (html_dir / rel).is_file():
            continue
        driver.get(base + rel)
        wait_loaded(driver)
        _wait_images(driver)
        if selector:
            found = driver.find_elements(By.CSS_SELECTOR, selector)
            if found:
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", found[0])
                time.sleep(0.3)
        path = screenshots_dir / name
        driver.save_screenshot(str(path))
        taken.append(path)
    return taken


def check_in_browser(
    html_dir: Path,
    screenshots_dir: Path | None = None,
    browser: Browser | None = None,
    pages: Sequence[str] | None = None,
) -> BrowserReport:
    """Load every page of the built site in headless Chromium, served from localhost.

    For each page: console messages of level SEVERE (JavaScript errors, failed
    loads) and images that did not load (``naturalWidth`` 0) are collected,
    and every exercise solution (a ``hide-cell`` cell or a ``{dropdown}``) must
    be invisible until its summary is clicked, and visible after.
    Then, on the landing page, a sidebar link is clicked and the browser must
    land on that page. Screenshots of :data:`SCREENSHOTS` go to
    ``screenshots_dir``. Needs the ``selenium`` package and :func:`find_browser`.
    """
    browser = browser or find_browser()
    if browser is None:
        raise BookError(
            "no Chromium/chromedriver found: run `sudo bash tools/install-browser.sh` "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    html_dir = Path(html_dir)
    pages = list(pages) if pages is not None else [str(p.relative_to(html_dir)) for p in html_pages(html_dir)]
    report = BrowserReport()
    t0 = time.perf_counter()
    with serve(html_dir) as base, tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = open_chromium(browser, profile)
        try:
            caps = driver.capabilities
            report.browser_version = f"{caps.get('browserName', 'chrome')} {caps.get('browserVersion', '?')}"
            for rel in pages:
                _visit(driver, base, rel, report)
            report.sidebar_ok, report.sidebar = _click_sidebar(driver, base)
            if screenshots_dir is not None:
                report.screenshots = _screenshots(driver, base, html_dir, Path(screenshots_dir))
        finally:
            driver.quit()
    report.seconds = time.perf_counter() - t0
    return report


def check(html_dir: Path | None = None, screenshots_dir: Path | None = None, browser: bool = True) -> bool:
    """Run the link check and (if ``browser``) the Chromium check; print both reports; True when clean."""
    html_dir = Path(html_dir or REPO_DIR / "_build" / "site" / "_build" / "html")
    if not (html_dir / "index.html").is_file():
        raise BookError(f"no built site in {html_dir}: run `python -m helpers.site build` first")
    broken = check_links(html_dir)
    print(
        f"links: {len(html_pages(html_dir))} pages, "
        + ("every local href/src resolves" if not broken else f"{len(broken)} broken:")
    )
    for line in broken:
        print(f"  {line}")
    ok = not broken
    if browser:
        report = check_in_browser(html_dir, screenshots_dir or REPO_DIR / "_build" / "screenshots")
        print(report)
        ok = ok and report.ok
    return ok


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.site build|check``: exit status 0 when clean, 1 when a build or check failed.

    2 on bad input.
    """
    parser = argparse.ArgumentParser(prog="python -m helpers.site")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the site from executed notebooks")
    b.add_argument("--executed", type=Path, default=None, help="folder of executed notebooks")
    b.add_argument("--out", type=Path, default=None, help="output folder (default _build/site)")
    b.add_argument("--no-strict", action="store_true", help="do not treat warnings as errors")
    b.add_argument("--no-cache", action="store_true", help="execute every concept notebook even if unchanged")
    c = sub.add_parser("check", help="check links, then load every page in headless Chromium")
    c.add_argument("--html", type=Path, default=None, help="built site (default _build/site/_build/html)")
    c.add_argument("--screenshots", type=Path, default=None, help="where screenshots go (default _build/screenshots)")
    c.add_argument("--no-browser", action="store_true", help="only check the links")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.executed, args.out, strict=not args.no_strict, cache_dir=None if args.no_cache else CACHE_DIR)
        else:
            return 0 if check(args.html, args.screenshots, browser=not args.no_browser) else 1
    except BookError as exc:
        return report_error(exc)  # 1 when the build or a page failed, 2 when the input cannot be used
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
