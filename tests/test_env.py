"""Tests of helpers.env: the report, the probes and the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO_DIR, env, repo_path
from helpers.errors import BookError, ProfileError, UsageError


@pytest.fixture(scope="module")
def report() -> env.EnvReport:
    return env.report(probes=False)


def fake_report(cuda: bool = False, gpu_gb: float = 80.0, **probes: env.Probe) -> env.EnvReport:
    gpus = [env.GPUInfo("Fake GPU", gpu_gb, (9, 0))] if cuda else []
    return env.EnvReport(
        python="3.11.7",
        os="Linux",
        versions={"torch": "2.14.1", "xtuner": "0.2.0", "lmdeploy": None},
        cpu_cores=2,
        ram_total_gb=23.0,
        ram_available_gb=20.0,
        disk_free_gb=50.0,
        cuda_available=cuda,
        gpus=gpus,
        cuda_version="13.0" if cuda else None,
        bf16_supported=cuda,
        probes=probes,
    )


CPU_PROBES = {
    "bnb_4bit": env.Probe(True, "NF4 works on cpu."),
    "flash_attn": env.Probe(False, "flash-attn is not installed."),
    "lmdeploy": env.Probe(False, "lmdeploy is not installed."),
    "xtuner": env.Probe(True, "xtuner imports."),
}


def test_report_field_types(report: env.EnvReport) -> None:
    assert isinstance(report.python, str) and report.python.startswith("3.")
    assert isinstance(report.os, str)
    assert list(report.versions) == list(env.PACKAGES)
    assert all(v is None or isinstance(v, str) for v in report.versions.values())
    assert report.versions["torch"] is not None
    assert isinstance(report.cpu_cores, int) and report.cpu_cores >= 1
    for value in (report.ram_total_gb, report.ram_available_gb, report.disk_free_gb):
        assert isinstance(value, float) and value >= 0
    assert report.ram_total_gb >= report.ram_available_gb
    assert isinstance(report.cuda_available, bool)
    assert isinstance(report.bf16_supported, bool)
    assert all(isinstance(g, env.GPUInfo) for g in report.gpus)
    assert report.cuda_available == bool(report.gpus)
    assert report.probes == {}


def test_missing_package_is_none() -> None:
    assert env.package_version("surely-not-an-installed-package") is None


def test_renderings(report: env.EnvReport) -> None:
    text = str(report)
    assert "Packages:" in text and "torch" in text and "CPU cores" in text
    html = report._repr_html_()
    assert html.startswith("<table>") and "<td style='text-align:left'>torch</td>" in html
    assert "Hardware" in str(report.table("Hardware"))
    pins = env.pins(report)
    assert [row[0] for row in pins.rows] == [*env.PINS, *env.NOT_HERE]
    assert {row[3] for row in pins.rows} <= {"ok", "differs", "missing", "not here", "installed"}
    book = env.book_pins()
    for name, pin, *_ in pins.rows:  # every pin shown is the requirement files' own
        assert pin == book.get(name, "-"), name
    assert book["deepspeed"] == "0.18.9" and book["xtuner"] == "0.2.0" and book["pyyaml"]


def test_pins_come_from_the_requirement_files(tmp_path) -> None:
    (tmp_path / "base.txt").write_text("# why\ntorch==9.9.9  # a reason\n")
    assert env.book_pins(tmp_path) == {"torch": "9.9.9"}
    (tmp_path / "no-deps.txt").write_text("xtuner>=0.2\n")
    with pytest.raises(UsageError, match=r"no-deps.txt, line 1: 'xtuner>=0.2' is not an exact pin"):
        env.book_pins(tmp_path)
    verdict = env.verdict(fake_report(**CPU_PROBES))
    assert "LMDeploy" in str(verdict) and "<table>" in verdict._repr_html_()


def test_verdict_cpu_only_is_tiny_and_skips_lmdeploy() -> None:
    verdict = env.verdict(fake_report(**CPU_PROBES))
    assert verdict.profile == "tiny"
    assert verdict.blockers == []
    lmdeploy = [s for s in verdict.skipped if s.startswith("LMDeploy")]
    assert lmdeploy == ["LMDeploy: no CUDA GPU here; inference uses the transformers backend."]
    assert any(s.startswith("FlashAttention 2") for s in verdict.skipped)
    assert all(s.endswith(".") and s.count(". ") == 0 for s in verdict.skipped)  # one sentence each


def test_verdict_gpu_thresholds() -> None:
    ok = {name: env.Probe(True, "fine.") for name in env.PROBES}
    big = env.verdict(fake_report(cuda=True, gpu_gb=80.0, **ok))
    assert big.profile == "gpu" and big.skipped == [] and big.blockers == []
    small = env.verdict(fake_report(cuda=True, gpu_gb=8.0, **ok))
    assert small.profile == "tiny" and "8.0 GiB" in small.reason
    # a card sold as 16 GB reports less than 16 GiB: it gets the gpu profile, pointed at the fast recipe
    t4 = env.verdict(fake_report(cuda=True, gpu_gb=14.75, **ok))
    assert t4.profile == "gpu" and "gpu-internvl2-2b-fast.yaml" in t4.reason
    assert "gpu-internvl2-2b-fast.yaml" not in big.reason
    just_below = env.verdict(fake_report(cuda=True, gpu_gb=env.GPU_PROFILE_MIN_GB - 0.1, **ok))
    assert just_below.profile == "tiny" and f"{env.GPU_PROFILE_MIN_GB:.1f} GiB" in just_below.reason
    # a card sold as 12 GB: still tiny by default, but told where InternVL2-2B QLoRA fits
    twelve = env.verdict(fake_report(cuda=True, gpu_gb=11.76, **ok))
    assert twelve.profile == "tiny" and "12 GB row" in twelve.reason
    assert "12 GB row" not in small.reason and f"{env.SMALL_GPU_MIN_GB:.1f} GiB" in small.reason


def test_a_bitsandbytes_that_cannot_run_nf4_blocks_training() -> None:
    """fit_to_hardware stops a 4-bit recipe there, so the verdict must not promise a fallback."""
    probes = dict(CPU_PROBES, bnb_4bit=env.Probe(False, "no NF4 kernel."))
    verdict = env.verdict(fake_report(**probes))
    assert [b for b in verdict.blockers if b.startswith("4-bit")]
    assert "quantization_llm" in verdict.blockers[0]
    assert not [s for s in verdict.skipped if s.startswith("4-bit")]


def test_verdict_blockers() -> None:
    probes = dict(CPU_PROBES, xtuner=env.Probe(False, "xtuner is not installed."))
    verdict = env.verdict(fake_report(**probes))
    assert len(verdict.blockers) == 1 and verdict.blockers[0].startswith("XTuner:")


def test_bnb_probe_returns_bool_and_reason() -> None:
    ok, reason = env.probe_bnb_4bit()
    assert isinstance(ok, bool)
    assert isinstance(reason, str) and reason.endswith(".")
    if env.package_version("bitsandbytes") == "0.50.2":  # the book's pin runs NF4 on CPU too
        assert ok, reason


@pytest.mark.parametrize("name", ["flash_attn", "lmdeploy", "xtuner"])
def test_other_probes_answer(name: str) -> None:
    ok, reason = env.PROBES[name]()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason


def test_save_and_load(tmp_path: Path) -> None:
    report = fake_report(**CPU_PROBES)
    path = env.save(tmp_path, report, env.verdict(report))
    assert path == tmp_path / "env.json"
    data = env.load(tmp_path)
    assert data["verdict"]["profile"] == "tiny"
    assert data["report"]["probes"]["bnb_4bit"] == {"ok": True, "reason": "NF4 works on cpu."}
    json.dumps(data)
    with pytest.raises(BookError, match="00_environment"):
        env.load(tmp_path / "missing")


def test_repo_path_and_setup(tmp_path: Path) -> None:
    assert repo_path("_build/x") == REPO_DIR / "_build" / "x"
    assert repo_path(tmp_path) == tmp_path
    assert not hasattr(env, "resolve_path"), "one name for one fact: helpers.repo_path"
    session = env.setup("tiny", device="auto", seed=1, output_dir=tmp_path / "out", verbose=False)
    assert session.device in ("cpu", "cuda") and session.output_dir.is_dir()
    with pytest.raises(ProfileError):
        env.setup("huge", output_dir=tmp_path)


def test_cli_prints_report_and_verdict(capsys: pytest.CaptureFixture) -> None:
    assert env.main(["--no-probes"]) == 0
    out = capsys.readouterr().out
    assert "Packages:" in out and "Verdict:" in out


def test_require_names_the_missing_path_and_the_notebook_to_run(tmp_path: Path) -> None:
    from helpers.errors import MissingOutputError

    there = tmp_path / "config.py"
    there.write_text("")
    assert env.require(there, "03") == there
    with pytest.raises(MissingOutputError) as info:
        env.require(tmp_path / "merged" / "config.json", "06")
    message = str(info.value)
    assert str(tmp_path / "merged" / "config.json") in message
    assert "notebook 06 (Conversion, notebooks/06_conversion.ipynb)" in message
    assert "python -m helpers.book run --only 06" in message
    assert isinstance(info.value, BookError)
