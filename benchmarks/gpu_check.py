"""GPU check: the whole pipeline with configs/gpu.yaml on the default dataset, then its figures.

Runs, in WORKDIR (default: a fresh temporary folder), this repository's Snakefile:

    snakemake -s REPO/Snakefile -d WORKDIR --configfile REPO/configs/gpu.yaml
        WORKDIR/gpu_check.yaml [EXTRA.yaml ...] --cores N --resources gpu=K --rerun-incomplete

on config.yaml's defaults: WORKDIR/gpu_check.yaml sets ``train.seeds: []`` (the master seed
only), the EXTRA files are the ``--overlay`` ones. Sized as: the default synthetic dataset
(48 train and 12 test studies), 3 folds, master seed only, gpu.yaml's model sizes (point
localizers resnet18d at 256 px for 30 epochs, severity models efficientnet_b0 at 128 px for
10 epochs, 9 localizer and 9 severity training jobs); target under 8 minutes on one H100 with
16 cores (``--cores 16 --gpu-jobs 8``: up to 8 GPU jobs share the card, two severity jobs of
8 threads side by side). ``--timeout`` stops the pipeline (and fails) before a device lease
runs out; the figures of the jobs that finished are printed either way.

Prints: the card, the snakemake jobs run, CV and test scores with the prior's
(results/eval/cv.json), per training job the last epoch's samples/s, data wait, GPU
utilisation and peak memory (checkpoint meta of results/train/models/*.pt and
results/localize/models/*.pt) with the job's wall time, the wall time per stage
(benchmarks/stage_table.py) and the total wall time. Exits non-zero with a message, and the
end of the Snakemake log (WORKDIR/gpu_check.log), when the pipeline fails.

    .venv/bin/python benchmarks/gpu_check.py [WORKDIR] [--overlay EXTRA.yaml ...] [--cores 16]
        [--gpu-jobs 8] [--timeout 540]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml
from stage_table import job_times, markdown, stage_table

from spinepipe import checkpoints
from spinepipe.config import deep_update

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = REPO / "configs" / "gpu.yaml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, nargs="?", help="Snakemake working directory "
                        "(default: a fresh temporary folder; an existing one resumes)")
    parser.add_argument("--overlay", type=Path, nargs="+", action="extend", default=[],
                        help="further config files, after configs/gpu.yaml")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu-jobs", type=int, default=8, help="--resources gpu=K: GPU jobs at once")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before the pipeline is stopped")
    parser.add_argument("--keep-going", action="store_true", help="snakemake --keep-going")
    parser.add_argument("--log-lines", type=int, default=40, help="Snakemake log lines shown on failure")
    return parser.parse_args()


def config_files(workdir: Path, overlays: list[Path]) -> list[Path]:
    """gpu.yaml, the master-seed-only overlay, then the caller's overlays (absolute paths)."""
    seeds = workdir / "gpu_check.yaml"
    seeds.write_text(yaml.safe_dump({"train": {"seeds": []}}))
    return [GPU_CONFIG, seeds, *(p.resolve() for p in overlays)]


def merged_config(files: list[Path]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in [REPO / "config.yaml", *files]:
        config = deep_update(config, yaml.safe_load(path.read_text()) or {})
    return config


def card(config: dict[str, Any]) -> str:
    """The GPU the training jobs ran on, or cpu when none was asked for or visible."""
    wants_gpu = "cuda" in (config["train"]["device"], config["localize"]["device"])
    return torch.cuda.get_device_name(0) if wants_gpu and torch.cuda.is_available() else "cpu"


def snakemake_command(workdir: Path, files: list[Path], cores: int, gpu_jobs: int,
                      keep_going: bool) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--configfile", *map(str, files), "--cores", str(cores), "--resources", f"gpu={gpu_jobs}",
            "--rerun-incomplete", *(["--keep-going"] if keep_going else [])]


def run_pipeline(command: list[str], workdir: Path, log: Path, timeout: float | None) -> int | None:
    """Snakemake's exit status (None: stopped at the timeout), its output in ``log``."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        # a session of its own: a timeout stops snakemake and every job it started
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return None


def jobs_line(log: Path) -> str:
    text = log.read_text(errors="replace")
    steps = re.findall(r"^(\d+) of (\d+) steps", text, re.MULTILINE)
    if steps:
        return f"snakemake: {steps[-1][0]} of {steps[-1][1]} jobs done in this run (log: {log})"
    if "Nothing to be done" in text:
        return f"snakemake: nothing to be done: the figures below are an earlier run's (log: {log})"
    return f"snakemake: no job finished (log: {log})"


def score_lines(results: Path) -> list[str]:
    path = results / "eval" / "cv.json"
    if not path.exists():
        return [f"scores: no {path}"]
    cv = json.loads(path.read_text())

    def fmt(key: str) -> str:
        return f"{cv[key]:.4f}" if isinstance(cv.get(key), (int, float)) else "-"

    return [f"CV score (end to end): {fmt('cv_score')}   prior: {fmt('prior_score')}",
            f"CV score (annotated points): {fmt('cv_score_annotated_points')}",
            f"test score: {fmt('test_score')}   prior: {fmt('test_prior_score')}"]


def _num(value: Any, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * float(value):.{digits}f}"


def severity_jobs(results: Path, wall: dict[str, float]) -> pl.DataFrame:
    """One row per severity model: its last epoch's figures and the job's wall time."""
    rows = []
    for path in sorted((results / "train" / "models").glob("*.pt")):
        meta = checkpoints.load(path)["meta"]
        last = meta["history"][-1]
        rows.append({"job": path.stem, "epochs": str(len(meta["history"])),
                     "precision": str(meta.get("precision", "-")),
                     "samples/s": _num(last.get("samples_per_second"), 0),
                     "data wait %": _num(last.get("data_wait_share"), 1, 100),
                     "GPU util %": _num(last.get("gpu_utilization"), 0),
                     "peak memory MB": _num(last.get("peak_memory_mb"), 0),
                     "GPU memory MB": _num(last.get("gpu_memory_mb"), 0),
                     "job s": _num(wall.get(f"train/{path.stem}.tsv"), 0)})
    return pl.DataFrame(rows)


def localizer_jobs(results: Path, wall: dict[str, float]) -> pl.DataFrame:
    """One row per localizer model: its last epoch's figures (point models time their batch
    assembly, slice models do not) and the job's wall time."""
    rows = []
    for path in sorted((results / "localize" / "models").glob("*.pt")):
        meta = checkpoints.load(path)["meta"]
        metrics = meta.get("metrics", {})
        rows.append({"job": path.stem, "precision": str(meta.get("precision", "-")),
                     "samples/s": _num(metrics.get("samples_per_second"), 0),
                     "data share %": _num(metrics.get("data_share"), 1, 100),
                     "epoch s": _num(metrics.get("epoch_seconds"), 1),
                     "job s": _num(wall.get(f"localize/train_{path.stem}.tsv"), 0)})
    return pl.DataFrame(rows)


def show(title: str, frame: pl.DataFrame) -> None:
    print(f"\n{title}")
    if frame.is_empty():
        print("(none)")
        return
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200,
                   tbl_width_chars=1000):
        print(frame)


def report(results: Path) -> None:
    """Scores, per training job figures and the stage table of what exists under ``results``."""
    print("\n".join(["", *score_lines(results)]))
    try:
        jobs = job_times(results)
    except SystemExit:  # no benchmark file yet
        jobs = pl.DataFrame(schema={"stage": pl.String, "job": pl.String, "wall_s": pl.Float64,
                                    "cpu_s": pl.Float64})
    wall = dict(zip(jobs["job"].to_list(), jobs["wall_s"].to_list()))
    show("severity training (last epoch; peak memory: GPU on cuda, process RSS on cpu)",
         severity_jobs(results, wall))
    show("localizer training (last epoch)", localizer_jobs(results, wall))
    print("\nwall time per stage (Snakemake benchmark files)")
    print(markdown(stage_table(jobs)) if jobs.height else "(no benchmark files)")


def main() -> None:
    args = parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    files = config_files(workdir, args.overlay)
    config = merged_config(files)
    log = workdir / "gpu_check.log"
    command = snakemake_command(workdir, files, args.cores, args.gpu_jobs, args.keep_going)
    print(f"card: {card(config)} (torch {torch.__version__}, {os.cpu_count()} CPU cores)")
    print(f"workdir: {workdir}\ncommand: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    status = run_pipeline(command, workdir, log, args.timeout)
    seconds = time.perf_counter() - start
    print(jobs_line(log))
    report(workdir / "results")
    print(f"\ntotal wall time: {seconds:.0f} s")
    failure = None
    if status is None:
        failure = f"the pipeline was stopped at the {args.timeout:.0f} s timeout"
    elif status != 0:
        failure = f"snakemake exited with status {status}"
    elif not (workdir / "results" / "eval" / "cv.json").exists():
        failure = "snakemake succeeded but wrote no results/eval/cv.json"
    if failure:
        tail = log.read_text(errors="replace").splitlines()[-args.log_lines:]
        print("\n".join(["", f"end of {log}:", *tail]), file=sys.stderr)
        sys.exit(f"GPU check FAILED: {failure} after {seconds:.0f} s (log: {log})")


if __name__ == "__main__":
    main()
