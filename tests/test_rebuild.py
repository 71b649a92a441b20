"""Rebuild semantics of the workflow (local executor, tiny synthetic dataset).

Each test that changes files works in its own copy of one built working directory; plans
are read from dry runs where that suffices, real runs check what a run actually touches.
The runs ask for the outputs up to the geometry evaluation (TARGETS), not the default
target: the stages after it (training) would make every run minutes long.
(tests/test_workflow.py covers the default target, "second dry run: nothing to be done"
and "one more study plans only its shard".)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY, make_config
from workflow_runs import planned_jobs, snakemake

from spinepipe.synth.layout import study_ids

TARGETS = ["results/dataset/summary.json", "results/synthetic/learnability.json",
           "results/metadata/axial_xref.parquet", "results/eval/geometry.json"]
CSVS = ["train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
        "test_series_descriptions.csv", "sample_submission.csv", "test_labels.csv",
        "level_centers.csv", "quirks.csv", "grade_probabilities.csv"]
NOTHING = "Nothing to be done"

pytestmark = pytest.mark.slow


def run(workdir: Path, *args: str, overlays: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """snakemake on TARGETS with tiny.yaml (+ overlays) in workdir."""
    return snakemake(workdir, *TARGETS, *args, "--configfile", "tiny.yaml", *overlays)


def ran_jobs(output: str) -> dict[str, int]:
    """Rule -> number of jobs a real run finished."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def stamps(root: Path, *patterns: str) -> dict[str, int]:
    """Relative path -> mtime (ns) of the files (and folders) matching the patterns."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns
            for pattern in patterns for p in root.glob(pattern)}


def digests(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


def train_ids(workdir: Path) -> list[str]:
    lines = (workdir / "results" / "synthetic" / "train.csv").read_text().splitlines()
    assert lines[0].startswith("study_id,")
    return [line.split(",")[0] for line in lines[1:]]


def write_overlay(workdir: Path, name: str, overlay: dict) -> str:
    (workdir / name).write_text(yaml.safe_dump(overlay))
    return name


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A working directory with TARGETS built from the tiny config."""
    workdir = tmp_path_factory.mktemp("built")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A copy of the built directory, mtimes and .snakemake metadata included."""
    workdir = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(built), str(workdir)], check=True)
    return workdir


def test_second_run_runs_nothing_and_touches_nothing(copy):
    before = stamps(copy, "results/**/*", "logs/**/*")
    result = run(copy)
    assert result.returncode == 0, result.stderr[-2000:]
    assert NOTHING in result.stdout + result.stderr
    assert ran_jobs(result.stdout + result.stderr) == {}
    assert stamps(copy, "results/**/*", "logs/**/*") == before


def test_touched_input_with_same_content_reruns_nothing(copy):
    # Newer than every output of its consumers, but the recorded checksum matches.
    csv = copy / "results" / "synthetic" / "train_series_descriptions.csv"
    later = time.time_ns() + 10**9
    os.utime(csv, ns=(later, later))
    result = run(copy, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert NOTHING in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.parametrize("overlay, expected", [
    ({"geometry": {"foramen_offset_mm": 18.0}}, {"geometry_eval": 1}),
    ({"geometry": {"axial_symmetry_refine": False}}, {"axial_xref": 1, "geometry_eval": 1}),
], ids=["foramen_offset_mm", "axial_symmetry_refine"])
def test_parameter_change_reruns_only_the_stages_that_use_it(built, overlay, expected):
    name = write_overlay(built, f"param_{next(iter(overlay['geometry']))}.yaml", overlay)
    result = run(built, "--dry-run", overlays=(name,))
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_jobs(result.stdout) == expected, result.stdout[-3000:]
    assert "Params have changed since last execution" in result.stdout


def test_adding_a_study_reruns_only_its_shard(copy):
    grown = {**TINY, "synthetic": {**TINY["synthetic"], "n_train": TINY["synthetic"]["n_train"] + 1}}
    name = write_overlay(copy, "grown.yaml", grown)
    config = make_config()
    shards = config["metadata"]["shards"]
    new_id = study_ids(config["seed"], "train", TINY["synthetic"]["n_train"] + 1)[-1]
    shard = new_id % shards
    cache = stamps(copy, "results/metadata/cache/train/*.parquet")
    rendered = stamps(copy, "results/synthetic/shards/*/**/*")
    images = stamps(copy, "results/synthetic/train_images/**/*.dcm")
    result = run(copy, overlays=(name,))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = ran_jobs(result.stdout + result.stderr)
    # Only the new study's shard is rendered and parsed; what reads the merged tables reruns.
    assert jobs["synthesize_shard"] == 1 and jobs["instances_shard"] == 1, jobs
    assert f"results/synthetic/shards/train_{shard:04d}" in result.stdout + result.stderr
    assert {"synthesize_train", "dataset_summary", "metadata_split", "metadata", "axial_xref",
            "geometry_eval"} <= jobs.keys(), jobs
    assert "synthesize_test" not in jobs, jobs
    assert str(new_id) in train_ids(copy)
    # The other shards' studies keep their files and their header-cache entries.
    mine = {str(sid) for sid in train_ids(copy) if int(sid) % shards == shard}
    after = stamps(copy, "results/metadata/cache/train/*.parquet")
    assert set(after) - set(cache) == {f"results/metadata/cache/train/{new_id}.parquet"}
    assert {k: after[k] for k in cache if Path(k).stem not in mine} == \
        {k: v for k, v in cache.items() if Path(k).stem not in mine}
    others = {k: v for k, v in rendered.items() if f"/train_{shard:04d}" not in k}
    assert {k: v for k, v in stamps(copy, "results/synthetic/shards/*/**/*").items()
            if k in others} == others
    new_images = stamps(copy, "results/synthetic/train_images/**/*.dcm")
    kept = {k: v for k, v in images.items() if Path(k).parts[3] not in mine}
    assert {k: new_images[k] for k in kept} == kept and len(new_images) > len(images)
    summary = json.loads((copy / "results" / "dataset" / "summary.json").read_text())
    assert summary["train_studies"] == TINY["synthetic"]["n_train"] + 1


def test_deleted_intermediate_is_rebuilt_with_what_depends_on_it(copy, built):
    series = copy / "results" / "metadata" / "series.parquet"
    upstream = stamps(copy, "results/synthetic/**/*", "results/metadata/train/*",
                      "results/metadata/test/*", "results/metadata/cache/**/*")
    series.unlink()
    # Snakemake 9 rebuilds a missing intermediate only when a job that needs it has to run:
    # with every requested output present and up to date, nothing is planned.
    result = run(copy, "--dry-run")
    assert result.returncode == 0 and NOTHING in result.stdout + result.stderr, result.stdout[-3000:]
    # Asking for it plans its own job alone...
    result = snakemake(copy, "results/metadata/series.parquet", "--dry-run",
                       "--configfile", "tiny.yaml")
    assert planned_jobs(result.stdout) == {"metadata": 1}, result.stdout[-3000:]
    # ...and once a downstream output is gone too, the plan is the intermediate's job and
    # what depends on it, nothing upstream (no synthesize_shard, no instances_shard).
    (copy / "results" / "eval" / "geometry.json").unlink()
    result = run(copy, "--dry-run")
    assert planned_jobs(result.stdout) == {"metadata": 1, "geometry_eval": 1}, result.stdout[-3000:]
    result = run(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran_jobs(result.stdout + result.stderr) == {"metadata": 1, "geometry_eval": 1}
    assert stamps(copy, "results/synthetic/**/*", "results/metadata/train/*",
                  "results/metadata/test/*", "results/metadata/cache/**/*") == upstream
    assert series.read_bytes() == (built / "results" / "metadata" / "series.parquet").read_bytes()
    assert (copy / "results" / "eval" / "geometry.json").read_text() == \
        (built / "results" / "eval" / "geometry.json").read_text()
    assert NOTHING in (run(copy, "--dry-run").stdout)


def test_killed_run_resumes_with_rerun_incomplete(built, tmp_path):
    workdir = tmp_path / "killed"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    log = workdir / "killed.log"
    incomplete = workdir / ".snakemake" / "incomplete"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "1", *TARGETS, "--configfile", "tiny.yaml"]
    with log.open("w") as out:
        # Own process group, so the kill also takes the job's script process.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                                start_new_session=True)
        try:
            # Mid-way: one job finished and the next one running (marked incomplete).
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                if ("Finished jobid" in log.read_text() and incomplete.is_dir()
                        and any(incomplete.iterdir())):
                    break
                time.sleep(0.1)
            assert proc.poll() is None, f"run ended before it could be killed:\n{log.read_text()[-2000:]}"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    markers = list(incomplete.iterdir())
    assert markers, log.read_text()[-2000:]
    # a rendering job, or a header parse of a shard already rendered (its chain needs no
    # other shard)
    interrupted = [base64.urlsafe_b64decode(m.name).decode() for m in markers]
    assert all(p.startswith(("results/synthetic/shards/", "results/metadata/"))
               for p in interrupted), interrupted
    # The kill can land while the job writes its output: leave a partial output behind.
    partial = workdir / interrupted[0]
    if interrupted[0].startswith("results/synthetic/shards/"):  # a directory output
        partial.mkdir(parents=True, exist_ok=True)
        (partial / "labels.parquet").write_bytes(b"partial")
    else:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"partial")

    result = run(workdir, "--dry-run")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "IncompleteFilesException" in output and interrupted[0] in output, output[-2000:]
    # A SIGKILLed snakemake leaves its lock behind; --unlock, then resume.
    assert run(workdir, "--unlock").returncode == 0
    result = run(workdir, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    assert NOTHING in run(workdir, "--dry-run").stdout

    # Same outputs as the uninterrupted run.
    for name in CSVS:
        assert (workdir / "results" / "synthetic" / name).read_bytes() == \
            (built / "results" / "synthetic" / name).read_bytes(), name
    for pattern in ("results/synthetic/*_images/**/*.dcm", "results/synthetic/shards/*/*"):
        assert digests(workdir, pattern) == digests(built, pattern), pattern
    for name in ("results/eval/geometry.json", "results/dataset/summary.json"):
        assert (workdir / name).read_text() == (built / name).read_text(), name
