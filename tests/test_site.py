"""The course site as a reader sees it.

Fast checks: the concept notebooks in ``book/`` are stored clean, every page is in the table of
contents, the parameter files parse and are documented, and the link checker works. Slow checks
(marker ``notebooks``): the whole book runs into a temporary folder, the site is built from it with
warnings as errors, every local link resolves, and every page loads in headless Chromium without
console errors or broken images, with a working sidebar; screenshots go to ``_build/screenshots/``.

Without Chromium the browser test is skipped, except in CI (``CI`` set), where it fails: CI installs
the browser with ``tools/install-browser.sh``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
SWEEP_KEYS = {"name", "lora_r", "lora_alpha", "lr", "optimizer", "max_steps"}


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but an empty/false value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ------------------------------------------------------------------------------------------------
# fast checks


def test_concept_notebooks_are_stored_clean_and_start_without_parameters():
    import nbformat

    from helpers import book, site

    notebooks = site.book_notebooks(ROOT)
    assert notebooks, "book/concepts/*.ipynb: the concept chapters computed from code"
    assert book.strip(notebooks, check=True) == [], "run `python -m helpers.book strip book/`"
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        assert nb.metadata.kernelspec["name"] == "python3" and nb.metadata.language_info["name"] == "python"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        assert all("parameters" not in c.metadata.get("tags", []) for c in code), (
            f"{path.name}: concept chapters have no parameters cell; the site executes them as they are"
        )
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), (
            f"{path.name}: the first cell is the chapter's title"
        )


def test_every_page_of_book_is_in_the_toc_and_every_toc_entry_exists():
    from helpers import site

    toc = site.toc_files(ROOT / "_toc.yml")
    pages = sorted(
        str(p.relative_to(ROOT).with_suffix(""))
        for p in (ROOT / "book").rglob("*")
        if p.suffix in (".md", ".ipynb") and not {"_ext", "_static", ".ipynb_checkpoints"} & set(p.parts)
    )
    missing = [p for p in pages if p not in toc]
    assert not missing, f"pages not in _toc.yml (only_build_toc_files drops them silently): {missing}"
    for entry in toc:
        if entry.startswith("notebooks/"):
            assert (ROOT / f"{entry}.ipynb").is_file(), entry
        else:
            assert any((ROOT / f"{entry}{s}").is_file() for s in (".md", ".ipynb")), entry


def test_parameter_files_parse_and_every_key_is_documented():
    import yaml

    from helpers import book

    two_gpu = book.load_params(ROOT / "params" / "gpu-internvl2-2b-2gpu.yaml")
    assert two_gpu["profile"] == "gpu" and two_gpu["nproc_per_node"] == 2
    assert two_gpu["deepspeed"] == "deepspeed_zero2"

    keys: set[str] = set()
    for name in ("sweep-lora-rank.yaml", "sweep-lr-optimizer.yaml"):
        sweep = yaml.safe_load((ROOT / "params" / name).read_text(encoding="utf-8"))
        assert set(sweep) == {"base", "runs"}, name
        assert set(sweep["base"]) <= SWEEP_KEYS - {"name"}, name
        names = [run["name"] for run in sweep["runs"]]
        assert len(names) == len(set(names)) >= 2, f"{name}: runs need distinct names"
        for run in sweep["runs"]:
            merged = {**sweep["base"], **run}
            assert set(run) <= SWEEP_KEYS, f"{name}: {run}"
            assert merged.get("optimizer", "AdamW") in ("AdamW", "DAdaptAdam"), run
            assert isinstance(merged.get("lr", 2e-5), float), f"{name}: lr must be a float (write 2.0e-5)"
            assert all(isinstance(merged[k], int) for k in ("lora_r", "lora_alpha", "max_steps") if k in merged)
        keys |= set(sweep["base"]) | {k for run in sweep["runs"] for k in run} | {"base", "runs"}

    doc = (ROOT / "book" / "reference" / "parameters.md").read_text(encoding="utf-8")
    for path in sorted((ROOT / "params").glob("*.yaml")):
        assert f"../../params/{path.name}" in doc, f"parameters.md does not include {path.name}"
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        keys |= {k for k in data if k not in ("base", "runs")}
    from helpers import book

    for notebook in book.discover(ROOT / "notebooks"):  # and every notebook's parameters cell
        keys |= set(book.parameter_names(notebook))
    undocumented = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not undocumented, f"explain these parameters in book/reference/parameters.md: {undocumented}"


def test_link_checker_reports_missing_files_and_anchors(tmp_path: Path):
    from helpers import site

    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#there">ok</a> <a href="sub/page.html#nowhere">bad anchor</a>'
        '<a href="gone.html">missing</a> <a href="https://example.org/x.html">external</a>'
        '<img src="sub/pic.png" alt="a picture"> <img src="sub/lost.png" alt="">'
        '<a href="#top" id="top">self</a> <a href="mailto:a@b.c">mail</a>',
        encoding="utf-8",
    )
    (tmp_path / "sub" / "page.html").write_text('<h1 id="there">T</h1><a href="../index.html">up</a>', encoding="utf-8")
    (tmp_path / "sub" / "pic.png").write_bytes(b"\x89PNG")
    broken = site.check_links(tmp_path)
    assert len(broken) == 3, broken
    assert any("nowhere" in b for b in broken)
    assert any("gone.html" in b for b in broken)
    assert any("lost.png" in b for b in broken)
    assert site.images_without_alt(tmp_path) == {"index.html": ["sub/lost.png (alt='')"]}


def test_concept_notebooks_run_through_the_runner_and_a_failure_names_the_chapter(tmp_path: Path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from helpers import site
    from helpers.errors import RunError

    repo, stage = tmp_path / "repo", tmp_path / "stage"
    good = new_notebook(cells=[new_markdown_cell("# Good"), new_code_cell("import helpers\nprint(6 * 7)")])
    for root in (repo, stage):
        (root / "book").mkdir(parents=True)
        nbformat.write(good, str(root / "book" / "a_good.ipynb"))
    ran = site.execute_book_notebooks(stage, repo=repo, cache_dir=tmp_path / "cache")
    assert [(name, how) for name, how, _ in ran] == [("book/a_good.ipynb", "ran")]
    outputs = nbformat.read(str(stage / "book" / "a_good.ipynb"), as_version=4).cells[1].outputs
    assert outputs[0]["text"] == "42\n"
    assert site.execute_book_notebooks(stage, repo=repo, cache_dir=tmp_path / "cache")[0][1] == "cached"

    bad = new_notebook(cells=[new_markdown_cell("# Bad"), new_code_cell("raise KeyError('gone')")])
    nbformat.write(bad, str(stage / "book" / "b_bad.ipynb"))
    with pytest.raises(RunError, match="concept chapter book/b_bad.ipynb failed") as info:
        site.execute_book_notebooks(stage, repo=repo, cache_dir=None)
    assert "cell 2 of b_bad.ipynb" in str(info.value) and "KeyError" in str(info.value)


# ------------------------------------------------------------------------------------------------
# the real site


@pytest.fixture(scope="module")
def built_site(executed_book, tmp_path_factory) -> Path:
    """The site built from the book run shared with tests/test_notebooks.py (tiny profile)."""
    from helpers import site

    tmp = tmp_path_factory.mktemp("site")
    # cache_dir=None: every concept notebook is executed, so they are tested too
    return site.build(executed=executed_book / "notebooks", out=tmp / "site", cache_dir=None)


@pytest.mark.notebooks
def test_site_has_every_page_executed_and_no_broken_links(built_site: Path):
    from helpers import site

    for entry in site.toc_files(ROOT / "_toc.yml"):
        assert (built_site / f"{entry}.html").is_file(), entry
    assert site.check_links(built_site) == []
    # the concept chapters carry their computed results and figures, each with alt text
    architecture = (built_site / "book" / "concepts" / "architecture.html").read_text(encoding="utf-8")
    assert "2,205,754,368" in architecture, "the parameter count computed on the meta device"
    assert (built_site / "book" / "concepts" / "qlora.html").read_text(encoding="utf-8").count("identical") >= 1
    for page in ("architecture", "design-patterns", "qlora"):
        assert "<img" in (built_site / "book" / "concepts" / f"{page}.html").read_text(encoding="utf-8"), page
    # every figure, the notebooks' included (their cells carry mystnb image alt metadata)
    no_alt = site.images_without_alt(built_site)
    assert not no_alt, f"images without a descriptive alt text: {no_alt}"


@pytest.mark.notebooks
@pytest.mark.reads_book  # built_site through request (tests/conftest.py starts the book early for it)
def test_every_page_loads_in_headless_chromium(request):
    from helpers import site

    browser = site.find_browser()
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if browser is None:
        reason = (
            "no Chromium/chromedriver (or no selenium): run `sudo bash tools/install-browser.sh` "
            "and `pip install selenium`"
        )
        if in_ci():
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)

    built_site = request.getfixturevalue("built_site")  # built only when there is a browser to check it
    report = site.check_in_browser(built_site, SCREENSHOTS)
    print(report)
    assert len(report.pages) == len(site.html_pages(built_site))
    assert not report.console_errors, report.console_errors
    assert not report.broken_images, report.broken_images
    assert report.images_seen >= 6, "the figures of the concept chapters and notebook 01"
    assert report.sidebar_ok, report.sidebar
    # every workflow notebook and concept chapter ends with exercises whose answers stay hidden until clicked
    assert report.solutions_checked >= 8, report.solutions_checked
    assert not report.solutions_visible, report.solutions_visible
    assert not report.solutions_not_revealed, report.solutions_not_revealed

    from PIL import Image

    names = {p.name for p in report.screenshots}
    assert names == {name for name, _, _ in site.SCREENSHOTS}, names
    for path in report.screenshots:
        with Image.open(path) as shot:
            assert shot.size[0] >= 1000 and shot.size[1] >= 600, (path, shot.size)
            colours = shot.convert("RGB").resize((200, 120)).getcolors(maxcolors=100_000) or []
            assert len(colours) > 50, f"{path.name} looks blank"
