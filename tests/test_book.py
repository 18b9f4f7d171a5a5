"""Tests of the papermill runner (helpers.book) on throwaway notebooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers import REPO_DIR, book
from helpers.errors import ProfileError, RunError, UsageError


def make_notebook(path: Path, params: str | None, *body: str, metadata: bool = False) -> Path:
    """A notebook with an optional ``parameters`` cell followed by code cells.

    Without ``metadata`` it has no kernelspec / language_info, as a notebook
    written by a script would: the runner must cope.
    """
    cells = [new_markdown_cell(f"# {path.stem}")]
    if params is not None:
        cells.append(new_code_cell(params, metadata={"tags": ["parameters"]}))
    cells += [new_code_cell(src) for src in body]
    nb = new_notebook(cells=cells)
    if metadata:
        nb.metadata["kernelspec"] = dict(book.KERNELSPEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def record(log: Path) -> str:
    """A cell that appends the notebook's name and its visible parameters to ``log``."""
    return (
        "import json, pathlib\n"
        "names = ['profile', 'alpha', 'beta', 'gamma', 'out_dir']\n"
        "seen = {n: globals()[n] for n in names if n in globals()}\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'nb': NAME, 'params': seen}) + '\\n')\n"
    )


def run(*args: str) -> int:
    return book.main(list(args))


# --------------------------------------------------------------------------- a successful run


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three notebooks run once; the tests below inspect different aspects of that run."""
    tmp = tmp_path_factory.mktemp("ok")
    nbs, build, log = tmp / "nbs", tmp / "build", tmp / "log.jsonl"
    make_notebook(nbs / "00_first.ipynb", 'profile = "x"\nalpha = 1\nNAME = "00"', record(log))
    make_notebook(
        nbs / "01_second.ipynb", 'beta: str = "b"\ngamma, out_dir = 0, "rel"\nNAME = "01"', record(log), metadata=True
    )
    make_notebook(nbs / "02_noparams.ipynb", None, 'NAME = "02"\n' + record(log))
    make_notebook(nbs / "notes.ipynb", None, "raise RuntimeError('not a book notebook')")
    params_file = tmp / "p.yaml"
    params_file.write_text("beta: from-file\nalpha: 2\nnobody_uses_this: 1\n")
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = run(
            "run",
            "--notebooks-dir",
            str(nbs),
            "--build-dir",
            str(build),
            "--params-file",
            str(params_file),
            "-p",
            "alpha",
            "20",
            "-p",
            "gamma",
            "1e-3",
            "-p",
            "out_dir",
            "sub/x",
        )
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return {"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "build": build, "log": lines, "nbs": nbs}


def test_run_succeeds_in_order(ok_run: dict) -> None:
    assert ok_run["rc"] == 0, ok_run["err"]
    assert [entry["nb"] for entry in ok_run["log"]] == ["00", "01", "02"]
    assert "[1/3] 00_first ... ok" in ok_run["out"]
    assert "[3/3] 02_noparams ... ok" in ok_run["out"]
    assert (ok_run["build"] / "01_second.ipynb").is_file()
    # nothing left beside the notebooks (kernel sockets, connection files)
    assert {p.suffix for p in ok_run["nbs"].iterdir()} == {".ipynb"}


def test_parameters_injected_only_where_defined(ok_run: dict) -> None:
    first, second, third = (entry["params"] for entry in ok_run["log"])
    # -p wins over the params file; profile comes from --profile; YAML scalars are typed
    assert first == {"profile": "tiny", "alpha": 20}
    # annotated and tuple assignments count; 1e-3 is a float; *_dir paths resolve against the repo
    assert second == {"beta": "from-file", "gamma": 0.001, "out_dir": str(REPO_DIR / "sub" / "x")}
    assert third == {}
    executed = nbformat.read(str(ok_run["build"] / "00_first.ipynb"), as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "beta" not in injected[0].source and "gamma" not in injected[0].source


def test_unknown_keys_warned(ok_run: dict) -> None:
    assert "nobody_uses_this" in ok_run["err"]
    assert "alpha" not in ok_run["err"]


def test_summary_json(ok_run: dict) -> None:
    summary = json.loads((ok_run["build"] / "run-summary.json").read_text())
    assert summary["profile"] == "tiny"
    assert summary["unused_parameters"] == ["nobody_uses_this"]
    rows = summary["notebooks"]
    assert [r["notebook"] for r in rows] == ["00_first", "01_second", "02_noparams"]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in rows)
    assert rows[0]["params"] == {"profile": "tiny", "alpha": 20}
    assert "total" in ok_run["out"]  # the final table of times


# --------------------------------------------------------------------------- a failing run


def test_failure_stops_run_with_clear_message(tmp_path: Path) -> None:
    nbs, build = tmp_path / "nbs", tmp_path / "build"
    never = tmp_path / "never-written"
    make_notebook(nbs / "00_ok.ipynb", "x = 1", "y = x + 1")
    make_notebook(nbs / "01_bad.ipynb", "x = 1", "y = x + 1", "value = y * 2\nraise ValueError(f'boom {value}')")
    make_notebook(nbs / "02_later.ipynb", None, f"open({str(never)!r}, 'w').write('ran')")
    env = {**os.environ, "PYTHONPATH": str(REPO_DIR)}
    proc = subprocess.run(
        [sys.executable, "-m", "helpers.book", "run", "--notebooks-dir", str(nbs), "--build-dir", str(build)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert "01_bad" in err
    # cell 4 of the source notebook (markdown, parameters, two code cells), the 3rd execution
    assert "cell 4 of 01_bad.ipynb (In [3])" in err
    assert "ValueError: boom 4" in err
    assert "| value = y * 2" in err
    assert str(build / "01_bad.ipynb") in err
    assert "not run: 02_later" in err
    assert "Traceback" not in err
    assert "[2/3] 01_bad ... FAILED" in proc.stdout
    assert not never.exists()
    summary = json.loads((build / "run-summary.json").read_text())
    assert [r["status"] for r in summary["notebooks"]] == ["ok", "failed", "not run"]
    assert "ValueError" in summary["notebooks"][1]["error"]
    saved = nbformat.read(str(build / "01_bad.ipynb"), as_version=4)
    assert any(o.get("ename") == "ValueError" for c in saved.cells for o in c.get("outputs", []))


def test_the_kernel_process_output_goes_to_its_log_not_between_the_runs_lines(tmp_path: Path) -> None:
    """What the kernel itself prints outside cells (here, straight to its process's stderr,
    as ipykernel's own shutdown tracebacks are) lands in a log the failure names."""
    nb = make_notebook(
        tmp_path / "nbs" / "00_noisy.ipynb",
        None,
        "import sys\nsys.__stderr__.write('kernel-level line\\n')\nsys.__stderr__.flush()",
        "raise RuntimeError('after the noise')",
    )
    out = tmp_path / "build" / "00_noisy.ipynb"
    with pytest.raises(book.RunError) as info:
        book.execute(nb, out)
    log = book.kernel_log(out)
    assert "kernel-level line" in log.read_text()
    assert f"the kernel process's own log: {log}" in str(info.value)
    assert "kernel-level line" not in str(info.value)


def test_a_quiet_kernel_leaves_no_log(tmp_path: Path) -> None:
    nb = make_notebook(tmp_path / "nbs" / "00_quiet.ipynb", None, "x = 1")
    out = book.execute(nb, tmp_path / "build" / "00_quiet.ipynb")
    assert out.is_file()
    assert not book.kernel_log(out).exists()


def test_the_peak_memory_of_the_kernel_and_its_children_is_recorded(tmp_path: Path) -> None:
    """A child process of the kernel holding 400 MB shows in the executed notebook's peak and the summary."""
    child = "import time; b = bytearray(400 * 2**20); time.sleep(2)"
    nb = make_notebook(
        tmp_path / "nbs" / "00_big.ipynb",
        None,
        f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {child!r}], check=True)",
    )
    small = make_notebook(tmp_path / "nbs" / "01_small.ipynb", None, "x = 1")
    assert run("run", "--notebooks-dir", str(tmp_path / "nbs"), "--build-dir", str(tmp_path / "build")) == 0
    summary = json.loads((tmp_path / "build" / book.SUMMARY_NAME).read_text())
    peaks = {r["notebook"]: r["peak_memory_mb"] for r in summary["notebooks"]}
    assert peaks["00_big"] == book.peak_memory_mb(tmp_path / "build" / nb.name)
    assert peaks["00_big"] > 400 + peaks["01_small"] * 0.5 and 20 < peaks["01_small"] < 400, peaks
    assert book.peak_memory_mb(small) is None  # a source notebook has no record


def test_execute_runs_one_notebook_and_names_the_failing_cell(tmp_path: Path) -> None:
    """book.execute: parameters injected, helpers importable from the notebook's folder, clear failures."""
    nb = make_notebook(
        tmp_path / "nbs" / "00_one.ipynb",
        "x = 1",
        "import helpers, os\nassert os.getcwd() == " + repr(str(tmp_path / "nbs")) + "\ny = x * 3",
        "assert y == 6, f'y is {y}'",
    )
    out = book.execute(nb, tmp_path / "out.ipynb", {"x": 2})
    assert out == tmp_path / "out.ipynb" and out.is_file()
    with pytest.raises(RunError) as info:
        book.execute(nb, tmp_path / "bad.ipynb", {"x": 5})
    message = str(info.value)
    assert "cell 4 of 00_one.ipynb" in message and "AssertionError: y is 15" in message
    assert str(tmp_path / "bad.ipynb") in message and "not run" not in message
    assert type(info.value.__cause__).__name__ == "PapermillExecutionError"


def test_site_uses_only_public_names_of_book() -> None:
    """helpers.site runs notebooks through book's public functions, not its internals."""
    import ast

    tree = ast.parse((REPO_DIR / "helpers" / "site.py").read_text(encoding="utf-8"))
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "book"
            and node.attr.startswith("_")
        }
    )
    assert private == []


# --------------------------------------------------------------------------- selection, parameters


def test_select_only_and_from(tmp_path: Path) -> None:
    names = [tmp_path / f"{i:02d}_nb{i}.ipynb" for i in range(4)]
    assert [p.stem for p in book.select(names, only="00,02")] == ["00_nb0", "02_nb2"]
    assert [p.stem for p in book.select(names, start="02")] == ["02_nb2", "03_nb3"]
    assert [p.stem for p in book.select(names, only="01_nb1,03", start="02")] == ["03_nb3"]
    with pytest.raises(UsageError, match="No notebook matches '07'"):
        book.select(names, only="07")


def test_discover_ignores_other_notebooks(tmp_path: Path) -> None:
    for name in ("01_b.ipynb", "00_a.ipynb", "scratch.ipynb", "1_c.ipynb"):
        make_notebook(tmp_path / name, None)
    assert [p.name for p in book.discover(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]


def test_parameter_names_uses_ast(tmp_path: Path) -> None:
    src = "%matplotlib inline\na = 1  # comment\nb = c = 2\nd: int = 3\n(e, f) = 4, 5\nimport os\ng += 1\n"
    path = make_notebook(tmp_path / "00_p.ipynb", src)
    assert book.parameter_names(path) == ["a", "b", "c", "d", "e", "f"]
    assert book.parameter_names(make_notebook(tmp_path / "01_q.ipynb", None)) == []
    with pytest.raises(UsageError, match="not valid Python"):
        book.parameter_names(make_notebook(tmp_path / "02_r.ipynb", "a = ("))


def test_parse_value() -> None:
    assert book.parse_value("20") == 20
    assert book.parse_value("0.5") == 0.5
    assert book.parse_value("2e-5") == 2e-5
    assert book.parse_value("true") is True
    assert book.parse_value("null") is None
    assert book.parse_value("cuda:0") == "cuda:0"
    assert book.parse_value("nan") == "nan"


def test_profiles_define_common_parameters() -> None:
    for profile in book.PROFILES:
        params, _ = book._merge_params(profile, None, [], book.PARAMS_DIR)
        assert set(book.COMMON_PARAMETERS) <= set(params), profile
        assert params["profile"] == profile
        resolved = book.resolve_params(params)
        assert Path(resolved["output_dir"]).is_absolute()
        assert Path(resolved["model_path"]).is_absolute()


def test_params_file_can_choose_the_profile(tmp_path: Path) -> None:
    params, _ = book._merge_params("tiny", book.PARAMS_DIR / "gpu-internvl2-2b.yaml", [], book.PARAMS_DIR)
    assert params["profile"] == "gpu" and params["output_dir"] == "_build/outputs-gpu"
    params, _ = book._merge_params("gpu", None, [("profile", "tiny"), ("seed", "3")], book.PARAMS_DIR)
    assert params["profile"] == "tiny" and params["seed"] == 3
    with pytest.raises(ProfileError, match="Unknown profile 'huge'"):
        book._merge_params("tiny", None, [("profile", "huge")], book.PARAMS_DIR)


def test_gpu_profile_needs_cuda(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_notebook(tmp_path / "00_a.ipynb", "profile = 'tiny'")
    # a profile this machine cannot run is unusable input: exit status 2, as for a usage error
    assert run("run", "--notebooks-dir", str(tmp_path), "--build-dir", str(tmp_path / "b"), "--profile", "gpu") == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# --------------------------------------------------------------------------- strip


def _dirty_notebook(path: Path) -> Path:
    make_notebook(path, "a = 1", "print(a)", metadata=True)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].outputs = [new_output("stream", name="stdout", text="1\n")]
    nb.cells[2].execution_count = 2
    nb.cells[1].execution_count = 1
    nb.metadata["papermill"] = {"parameters": {}}
    nbformat.write(nb, str(path))
    return path


def test_strip_check_and_strip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dirty = _dirty_notebook(tmp_path / "00_dirty.ipynb")
    clean = make_notebook(tmp_path / "01_clean.ipynb", "a = 1", metadata=True)
    book.strip([clean])  # adds language_info: now it is clean
    capsys.readouterr()
    clean_bytes = clean.read_bytes()

    assert run("strip", "--check", str(tmp_path)) == 1
    captured = capsys.readouterr()
    dirty_line = next(line for line in captured.out.splitlines() if "00_dirty.ipynb: " in line)
    assert "outputs" in dirty_line and "execution counts" in dirty_line
    assert "01_clean" not in captured.out
    assert nbformat.read(str(dirty), as_version=4).cells[2].outputs  # --check changes nothing

    assert run("strip", str(tmp_path)) == 0
    nb = nbformat.read(str(dirty), as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert "papermill" not in nb.metadata
    assert nb.cells[1].metadata["tags"] == ["parameters"]  # tags survive
    assert nb.metadata["kernelspec"]["name"] == "python3" and nb.metadata["language_info"]["name"] == "python"
    assert clean.read_bytes() == clean_bytes  # clean notebooks are not rewritten
    assert run("strip", "--check", str(tmp_path)) == 0


def test_strip_removes_papermill_cells(tmp_path: Path) -> None:
    path = make_notebook(tmp_path / "00_x.ipynb", "a = 1", metadata=True)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(2, new_code_cell("a = 2", metadata={"tags": ["injected-parameters"]}))
    assert "papermill cells" in book.strip_notebook(nb)
    assert [c.source for c in nb.cells[1:]] == ["a = 1"]


@pytest.mark.notebooks
def test_environment_notebook_runs(tmp_path: Path) -> None:
    """notebooks/00_environment.ipynb through the runner, on the tiny profile."""
    out = tmp_path / "outputs"
    assert run("run", "--only", "00", "--build-dir", str(tmp_path / "build"), "-p", "output_dir", str(out)) == 0
    data = json.loads((out / "env.json").read_text())
    assert data["verdict"]["profile"] in ("tiny", "gpu")
    assert set(data["report"]["probes"]) == {"bnb_4bit", "flash_attn", "lmdeploy", "xtuner"}
    assert set(book.COMMON_PARAMETERS) <= set(book.parameter_names(book.NOTEBOOKS_DIR / "00_environment.ipynb"))


# --------------------------------------------------------------------------- the serving kernel


def serving_kernelspec(root: Path) -> Path:
    """A ``book-serve`` kernelspec under ``root`` (a JUPYTER_PATH) that runs this Python with a marker variable."""
    spec = root / "kernels" / book.SERVING_KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "serving", "language": "python", "env": {"BOOK_KERNEL": "serve"}}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return spec


@pytest.mark.parametrize(
    ("backend", "device", "cuda", "has_kernel", "expected"),
    [
        ("auto", "auto", True, True, book.SERVING_KERNEL),
        ("lmdeploy", "auto", True, True, book.SERVING_KERNEL),
        ("auto", "auto", True, False, "python3"),
        ("auto", "auto", False, True, "python3"),
        ("auto", "cpu", True, True, "python3"),
        ("transformers", "auto", True, True, "python3"),
    ],
)
def test_choose_kernels_sends_answering_notebooks_to_the_serving_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend, device, cuda, has_kernel, expected
) -> None:
    nbs = tmp_path / "nbs"
    make_notebook(nbs / "01_data.ipynb", 'backend = "auto"\ndevice = "auto"')
    make_notebook(nbs / "02_answer.ipynb", 'backend = "auto"\ndevice = "auto"')
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    if has_kernel:
        serving_kernelspec(tmp_path / "jupyter")
    monkeypatch.setattr(book, "_cuda_available", lambda: cuda)
    plan = book._plan("tiny", [("backend", backend), ("device", device)], None, None, None, nbs, book.PARAMS_DIR)
    chosen = book.choose_kernels(plan)
    assert chosen[nbs / "01_data.ipynb"] == ("python3", "")
    kernel, why = chosen[nbs / "02_answer.ipynb"]
    assert kernel == expected and why


@pytest.mark.parametrize("cuda", [True, False])
def test_lmdeploy_without_the_serving_kernel_stops_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cuda: bool
) -> None:
    nbs = tmp_path / "nbs"
    make_notebook(nbs / "02_answer.ipynb", 'backend = "auto"\ndevice = "auto"')
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setattr(book, "_cuda_available", lambda: cuda)
    plan = book._plan("tiny", [("backend", "lmdeploy")], None, None, None, nbs, book.PARAMS_DIR)
    with pytest.raises(UsageError, match="make gpu-env"):
        book.choose_kernels(plan)


def test_the_runner_executes_a_serving_notebook_in_the_serving_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    nbs, build = tmp_path / "nbs", tmp_path / "build"
    seen = "import os, pathlib\npathlib.Path(NAME + '.kernel').write_text(os.environ.get('BOOK_KERNEL', 'book'))"
    for name in ("01_data", "02_answer"):
        make_notebook(
            nbs / f"{name}.ipynb", f'backend = "auto"\ndevice = "auto"\nNAME = {str(tmp_path / name)!r}', seen
        )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    serving_kernelspec(tmp_path / "jupyter")
    monkeypatch.setattr(book, "_cuda_available", lambda: True)
    results = book.run_book(notebooks_dir=nbs, build_dir=build)
    assert (tmp_path / "01_data.kernel").read_text() == "book"
    assert (tmp_path / "02_answer.kernel").read_text() == "serve"
    assert [r.kernel for r in results] == ["python3", book.SERVING_KERNEL]
    assert f"kernel for 02_answer: {book.SERVING_KERNEL} (backend=auto on a CUDA GPU" in capsys.readouterr().out
    summary = json.loads((build / book.SUMMARY_NAME).read_text())
    assert summary["notebooks"][1]["kernel"] == book.SERVING_KERNEL


def test_papermill_reads_every_parameters_cell_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """papermill parses each parameters line itself (for ``--help-notebook`` and type hints); a comment
    holding ``=`` makes it log "Unable to parse line" in every run and hides that parameter's help."""
    from papermill.translators import PythonTranslator

    checked = 0
    for path in book.discover(REPO_DIR / "notebooks"):
        cell = next(
            c for c in nbformat.read(str(path), as_version=4).cells if "parameters" in c.metadata.get("tags", [])
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="papermill"):
            found = PythonTranslator.inspect(cell)
        assert not caplog.records, f"{path.name}: {[r.getMessage() for r in caplog.records]}"
        assert [p.name for p in found] == book.parameter_names(path), path.name
        checked += 1
    assert checked >= 12
