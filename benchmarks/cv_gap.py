"""Does the CV predict the test score? Prints, for finished runs, the end-to-end CV, the
classifier-only CV on annotated points and the test score as mean +/- sd over the training
seeds (results/eval/seeds.json, or one seed's cv.json), the per-seed gap test - CV, on
synthetic data each split's prior, Bayes floor and the share of the gap between them closed,
and the localization targets (results/eval/localization.json).

    python benchmarks/cv_gap.py RUN_DIR[=LABEL] ...

RUN_DIR is a Snakemake working directory (holding results/). Example: two runs of the same
dataset, one per training variant, each with `train: {seeds: [1, 2]}`:

    python benchmarks/cv_gap.py --paired /tmp/default_new=share0.5 /tmp/default_old=share0

With --paired, each later run's seed-by-seed difference to the first run is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +/- {statistics.stdev(values):.3f}"


FIGURES = ("cv_score", "cv_score_annotated_points", "test_score", "gap_closed", "test_gap_closed")
# the same for every seed of a run: read from the master seed's cv.json
SPLIT_FIGURES = ("prior_score", "floor_score", "test_prior_score", "test_floor_score")


def seed_values(results: Path) -> dict[str, dict[str, float | None]]:
    """Per headline figure, its value in each seed's run (keyed by seed)."""
    seeds_file, cv_file = results / "eval" / "seeds.json", results / "eval" / "cv.json"
    if seeds_file.exists():
        figures = json.loads(seeds_file.read_text())["figures"]
        return {name: figures.get(name, {}).get("values", {}) for name in FIGURES}
    cv = json.loads(cv_file.read_text())
    return {name: {"master": cv.get(name)} for name in FIGURES}


def paired_differences(run: Path, reference: Path) -> dict[str, list[float]]:
    """Per figure, run - reference for each seed both have: training variants run with the
    same seeds share data, folds and localization, so the paired difference is the variant's
    effect with the seed's own luck taken out."""
    mine, theirs = seed_values(run), seed_values(reference)
    return {name: [float(mine[name][s]) - float(theirs[name][s]) for s in mine[name]
                   if mine[name].get(s) is not None and theirs[name].get(s) is not None]
            for name in FIGURES}


def run_figures(results: Path) -> dict[str, list[float]]:
    """Per-seed values of the headline figures, and the per-seed gap test - end-to-end CV."""
    cv_file = results / "eval" / "cv.json"
    per_seed = seed_values(results)
    out = {name: [float(v) for v in values.values() if v is not None] for name, values in per_seed.items()}
    cv = json.loads(cv_file.read_text())
    out |= {name: [float(cv[name])] for name in SPLIT_FIGURES if cv.get(name) is not None}
    out["gap"] = [float(per_seed["test_score"][s]) - float(per_seed["cv_score"][s])
                  for s in per_seed["cv_score"]
                  if per_seed["cv_score"].get(s) is not None and per_seed["test_score"].get(s) is not None]
    return out


def localization_line(results: Path) -> str:
    path = results / "eval" / "localization.json"
    if not path.exists():
        return "no localization.json"
    loc: dict[str, Any] = json.loads(path.read_text())
    parts = []
    for task in ("sagittal_t2", "sagittal_t1", "axial_t2"):
        test, train = loc.get("test", {}).get(task, {}), loc.get("train", {}).get(task, {})
        if not test:
            continue
        parts.append(f"{task}: p95 {test.get('point_error_mm_p95', float('nan')):.1f} mm, "
                     f"within one {100 * test.get('slice_within_one', float('nan')):.1f}%, "
                     f"gross out of fold {100 * train.get('gross_error_share', float('nan')):.1f}%")
    met = loc.get("test", {}).get("all_targets_met"), loc.get("train", {}).get("all_targets_met")
    return "; ".join(parts) + f" | targets met: test {met[0]}, out of fold {met[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    parser.add_argument("--paired", action="store_true",
                        help="also print each run's difference to the first run, seed by seed")
    args = parser.parse_args()
    print(f"{'run':<22} {'n':>2}  {'end-to-end CV':>16}  {'annotated CV':>16}  {'test':>16}  {'test - CV':>16}")
    for spec in args.runs:
        directory, _, label = spec.partition("=")
        results = Path(directory) / "results"
        figures = run_figures(results)
        print(f"{label or directory:<22} {len(figures['cv_score']):>2}  {_spread(figures['cv_score']):>16}  "
              f"{_spread(figures['cv_score_annotated_points']):>16}  {_spread(figures['test_score']):>16}  "
              f"{_spread(figures['gap']):>16}")
        if figures.get("floor_score"):
            print(f"{'':<22} CV: prior {_spread(figures['prior_score'])}, floor "
                  f"{_spread(figures['floor_score'])}, gap closed {_spread(figures['gap_closed'])}; "
                  f"test: prior {_spread(figures['test_prior_score'])}, floor "
                  f"{_spread(figures['test_floor_score'])}, gap closed {_spread(figures['test_gap_closed'])}")
        print(f"{'':<22} localization (test; gross out of fold): {localization_line(results)}")
    if args.paired and len(args.runs) > 1:
        first = Path(args.runs[0].partition("=")[0]) / "results"
        print(f"\npaired difference to {args.runs[0]}, mean +/- sd over the seeds both have "
              "(negative: better score; positive: more of the gap closed)")
        print(f"{'run':<22} {'n':>2}  {'end-to-end CV':>16}  {'test':>16}  {'CV gap closed':>16}  "
              f"{'test gap closed':>16}")
        for spec in args.runs[1:]:
            directory, _, label = spec.partition("=")
            diff = paired_differences(Path(directory) / "results", first)
            print(f"{label or directory:<22} {len(diff['cv_score']):>2}  {_spread(diff['cv_score']):>16}  "
                  f"{_spread(diff['test_score']):>16}  {_spread(diff['gap_closed']):>16}  "
                  f"{_spread(diff['test_gap_closed']):>16}")


if __name__ == "__main__":
    main()
