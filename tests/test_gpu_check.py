"""benchmarks/gpu_check.py on the CPU: configs/gpu.yaml with a tiny overlay (device cpu, no
loader workers, the TINY dataset and epochs), run end to end in a fresh working directory."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY

from spinepipe import checkpoints
from spinepipe.config import deep_update

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
CPU_OVERLAY = deep_update(TINY, {"localize": {"device": "cpu"},
                                 "train": {"device": "cpu", "num_workers": 0, "pin_memory": False}})


def gpu_check(tmp_path: Path, overlay: dict) -> tuple[Path, subprocess.CompletedProcess]:
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    workdir = tmp_path / "run"  # does not exist yet: nothing in it predates the check
    result = subprocess.run([sys.executable, str(SCRIPT), str(workdir), "--overlay", "overlay.yaml",
                             "--cores", "2", "--gpu-jobs", "1"],
                            capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    return workdir, result


def table(output: str, title: str) -> dict[str, dict[str, str]]:
    """The Markdown table printed under the line starting with ``title``: first cell -> row."""
    after = output.split(f"\n{title}", 1)[1].splitlines()[1:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in itertools.takewhile(lambda line: line.startswith("|"), after)]
    header, body = rows[0], rows[2:]  # rows[1] is the |---| line
    return {row[0]: dict(zip(header, row)) for row in body}


@pytest.mark.slow
def test_gpu_check_runs_the_pipeline_and_prints_its_figures(tmp_path):
    workdir, result = gpu_check(tmp_path, CPU_OVERLAY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "card: cpu" in out
    # every job ran in this (new) working directory, and the figures are its results
    done = re.search(r"snakemake: (\d+) of (\d+) jobs done in this run", out)
    assert done and done.group(1) == done.group(2) and int(done.group(1)) > 50, out[:2000]
    cv = json.loads((workdir / "results" / "eval" / "cv.json").read_text())
    assert f"CV score (end to end): {cv['cv_score']:.4f}   prior: {cv['prior_score']:.4f}" in out
    assert f"test score: {cv['test_score']:.4f}   prior: {cv['test_prior_score']:.4f}" in out

    severity = table(out, "severity training")
    folds = range(TINY["folds"]["n"])
    assert set(severity) == {f"{family}_fold{fold}" for family in ("spinal", "foraminal", "subarticular")
                             for fold in folds}, severity
    for job, row in severity.items():
        history = checkpoints.load(workdir / "results" / "train" / "models" / f"{job}.pt")["meta"]["history"]
        assert row["samples/s"] == f"{history[-1]['samples_per_second']:.0f}"
        assert 0 <= float(row["data wait %"]) <= 100
        assert row["GPU util %"] == "-"  # on the CPU
        assert float(row["peak memory MB"]) > 0 and float(row["job s"]) > 0
    localizer = table(out, "localizer training")
    assert {f"point_{task}_fold{fold}" for task in ("sagittal_t2", "sagittal_t1", "axial_t2")
            for fold in folds} <= set(localizer), localizer
    assert all(0 <= float(row["data share %"]) <= 100 for job, row in localizer.items() if job.startswith("point"))

    stages = table(out, "wall time per stage")
    assert stages["severity training"]["jobs"] == str(len(severity))
    assert {"localizer training", "synthetic data", "crops", "**all**"} <= set(stages)
    assert re.search(r"^total wall time: \d+ s$", out, re.MULTILINE)


@pytest.mark.slow
def test_gpu_check_fails_loudly_when_the_pipeline_fails(tmp_path):
    # a value the config schema refuses: snakemake stops before any job
    _, result = gpu_check(tmp_path, deep_update(CPU_OVERLAY, {"train": {"prefetch_factor": 0}}))
    assert result.returncode != 0
    assert "GPU check FAILED: snakemake exited with status" in result.stderr
    assert "prefetch_factor" in result.stderr  # the end of the Snakemake log says why
    assert "scores: no " in result.stdout
