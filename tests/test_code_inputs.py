"""Code inputs: every package module a rule's script executes is an input of the rule.

The rules list ``script_code("<script>")``, the static import closure of their script
(spinepipe/code_inputs.py). These tests check that list against what Python really imports
(each script's import statements executed in a subprocess, ``sys.modules`` read back) and
that editing one deep module plans exactly the rules whose scripts execute it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TINY

from spinepipe.code_inputs import code_digest, import_closure

# Every rule of the workflow with its script and its `code` input, from the loaded workflow.
LIST_RULES = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    snakefile, workdir, configfile = (Path(a) for a in sys.argv[1:4])
    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(resource_settings=ResourceSettings(cores=1),
                                config_settings=ConfigSettings(configfiles=[configfile]),
                                snakefile=snakefile, workdir=workdir)._workflow
        rules = {}
        for rule in workflow.rules:
            code = list(rule.input.code) if "code" in rule.input._names else None
            script = str(rule.script) if rule.script else None
            rules[rule.name] = {"script": script, "code": code}
    print("RULES=" + json.dumps(rules))
""")

# For each script: forget the package, execute the script's import statements (not the
# script: it needs Snakemake's `snakemake` object), report which package files got loaded.
IMPORT_SCRIPTS = textwrap.dedent("""
    import ast, json, sys
    result = {}
    for script in sys.argv[1:]:
        for name in [n for n in sys.modules if n.split(".")[0] == "spinepipe"]:
            del sys.modules[name]
        tree = ast.parse(open(script).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), script, "exec"), {})
        result[script] = sorted(
            module.__file__ for name, module in list(sys.modules.items())
            if name.split(".")[0] == "spinepipe" and getattr(module, "__file__", None))
    print("IMPORTED=" + json.dumps(result))
""")


def _marked_json(output: str, marker: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith(marker))
    return json.loads(line[len(marker):])


def workflow_rules(snakefile: Path, workdir: Path) -> dict[str, dict]:
    workdir.mkdir(parents=True, exist_ok=True)
    # a further seed, so the *_seed rules are part of the workflow too
    (workdir / "rules.yaml").write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"],
                                                                          "seeds": [7]}}))
    result = subprocess.run([sys.executable, "-c", LIST_RULES, str(snakefile), str(workdir),
                             str(workdir / "rules.yaml")],
                            capture_output=True, text=True, timeout=300, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return _marked_json(result.stdout, "RULES=")


def imported_package_files(scripts: list[Path]) -> dict[str, set[str]]:
    result = subprocess.run([sys.executable, "-c", IMPORT_SCRIPTS, *map(str, scripts)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = _marked_json(result.stdout, "IMPORTED=")
    return {script: {str(Path(f).resolve()) for f in files} for script, files in imported.items()}


def script_file(snakefile: Path, script: str) -> Path:
    """A rule's script path (written relative to its rule file, rules/*.smk)."""
    return (snakefile.parent / "rules" / script).resolve()


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    return workflow_rules(REPO / "Snakefile", tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="module")
def imported(rules) -> dict[str, set[str]]:
    scripts = sorted({script_file(REPO / "Snakefile", r["script"]) for r in rules.values()
                      if r["script"]})
    return imported_package_files(scripts)


def test_every_script_rule_has_code_inputs(rules):
    scripted = {name: r for name, r in rules.items() if r["script"]}
    assert len(scripted) >= 25, sorted(scripted)
    missing = sorted(name for name, r in scripted.items() if not r["code"])
    assert not missing, f"rules without code inputs: {missing}"


def test_code_inputs_cover_every_module_the_script_imports(rules, imported):
    gaps = {}
    for name, rule in rules.items():
        if not rule["script"]:
            continue
        script = str(script_file(REPO / "Snakefile", rule["script"]))
        declared = {str(Path(p).resolve()) for p in rule["code"] or []}
        if missing := sorted(imported[script] - declared):
            gaps[name] = [str(Path(p).relative_to(REPO)) for p in missing]
    assert not gaps, f"modules a rule's script imports but its code inputs leave out: {gaps}"


def test_code_inputs_are_the_scripts_closure_and_not_the_whole_package(rules, imported):
    package = {str(p.resolve()) for p in (REPO / "spinepipe").rglob("*.py")}
    for name, rule in rules.items():
        if not rule["script"]:
            continue
        declared = {str(Path(p).resolve()) for p in rule["code"] or []}
        assert declared <= package, name
        # lazily imported modules (inside functions) are declared too, so the static
        # closure may exceed what importing loads, but never reaches every module
        assert len(declared) < len(package), name
    # a rule and its seed copy run the same script, so they list the same code
    assert rules["train_model_seed"]["code"] == rules["train_model"]["code"]


# The rules a predict-only run plans (tests/test_workflow.py checks a run plans exactly
# these), and the package modules whose job is training, evaluation against labels or
# experiment tracking: prediction must run (and rerun) without any of them.
PREDICT_RULES = ("instances_shard", "metadata_split", "localizer_stacks", "stacks_index", "localize",
                 "localize_merge", "coordinates_test", "crops_shard", "crops_index", "predict_test",
                 "submission", "qa_sheets", "qa_studies")
TRAINING_MODULES = ("spinepipe/classify/training.py", "spinepipe/classify/pipeline.py",
                    "spinepipe/classify/plots.py", "spinepipe/classify/jitter.py",
                    "spinepipe/classify/evaluate.py", "spinepipe/classify/end_to_end.py",
                    "spinepipe/classify/seeds.py", "spinepipe/classify/mlflow_model.py",
                    "spinepipe/localize/training.py", "spinepipe/localize/pipeline.py",
                    "spinepipe/localize/evaluate.py", "spinepipe/tracking/__init__.py",
                    "spinepipe/tracking/context.py", "spinepipe/tracking/retry.py",
                    "spinepipe/tracking/store.py", "spinepipe/tracking/election.py",
                    "spinepipe/tracking/runs.py", "spinepipe/tracking_datasets.py",
                    "spinepipe/seeding.py", "spinepipe/folds.py", "spinepipe/bundle/write.py",
                    "spinepipe/bundle/registry.py", "spinepipe/synth/__init__.py")


def test_prediction_rules_import_no_training_module(rules, imported):
    """The scripts of the predict-only rules: their static closures (what their code inputs
    are, lazy imports included) and what importing them loads reach no training, evaluation
    or tracking module."""
    training = {str((REPO / m).resolve()) for m in TRAINING_MODULES}
    assert all(Path(m).is_file() for m in training), "a listed training module no longer exists"
    reached = {}
    # predict_oof: a training run's prediction of its held-out studies, graded as test is
    for name in (*PREDICT_RULES, "predict_oof"):
        rule = rules[name]
        script = str(script_file(REPO / "Snakefile", rule["script"]))
        closure = {str(Path(p).resolve()) for p in rule["code"]} | imported[script]
        if found := sorted(closure & training):
            reached[name] = [str(Path(p).relative_to(REPO)) for p in found]
    assert not reached, f"prediction rules that import training code: {reached}"


def test_closure_follows_relative_imports_inside_functions_and_parent_packages(tmp_path):
    package = tmp_path / "spinepipe"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from . import helper\n")
    (package / "sub" / "helper.py").write_text("from ..leaf import value\n")
    (package / "sub" / "lazy.py").write_text("def f():\n    from spinepipe import late\n")
    (package / "leaf.py").write_text("value = 1\n")
    (package / "late.py").write_text("")
    (package / "unused.py").write_text("")
    script = tmp_path / "script.py"
    script.write_text("import os\nfrom spinepipe.sub.lazy import f\n")
    names = [str(p.relative_to(package)) for p in import_closure(script, package)]
    assert names == ["__init__.py", "late.py", "leaf.py", "sub/__init__.py", "sub/helper.py",
                     "sub/lazy.py"]


# --- editing one deep module plans exactly the rules that execute it --------------------

TARGETS = ["results/dataset/summary.json", "results/metadata/axial_xref.parquet",
           "results/eval/geometry.json"]
COPIED = ["Snakefile", "config.yaml", "rules", "workflow_scripts", "spinepipe", "report", "envs"]


def _snakemake(repo: Path, workdir: Path, *args: str,
               targets: list[str] = TARGETS) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
                           "-d", str(workdir), "--cores", "2", *targets, *args,
                           "--configfile", "tiny.yaml"], capture_output=True, text=True,
                          timeout=900, cwd=workdir)


def outputs_by_rule(repo: Path, workdir: Path) -> dict[str, list[str]]:
    """Rule -> the output files of its jobs in the TARGETS DAG (from --summary)."""
    result = _snakemake(repo, workdir, "--summary")
    assert result.returncode == 0, result.stderr[-3000:]
    outputs: dict[str, list[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) > 2:
            outputs.setdefault(fields[2], []).append(fields[0])
    return outputs


def planned_on_its_own(repo: Path, workdir: Path, rule: str, outputs: list[str]) -> bool:
    """Whether a rule's jobs are planned for their own inputs: a dry run allowed to schedule
    only that rule (a plain dry run also plans everything downstream of a rerun job and then
    reports only 'updated by another job')."""
    result = _snakemake(repo, workdir, "--dry-run", "--allowed-rules", rule, targets=outputs)
    assert result.returncode == 0, result.stderr[-3000:]
    return "Nothing to be done" not in result.stdout + result.stderr


@pytest.fixture(scope="module")
def built_copy(tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the workflow's code and a working directory built from it (TARGETS)."""
    root = tmp_path_factory.mktemp("edit")
    repo = root / "repo"
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            repo.mkdir(exist_ok=True)
            shutil.copy2(source, repo / name)
    workdir = root / "work"
    workdir.mkdir()
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    result = _snakemake(repo, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in _snakemake(repo, workdir, "--dry-run").stdout
    return repo, workdir


@pytest.fixture(scope="module")
def executed_modules(built_copy, tmp_path_factory) -> dict[str, set[str]]:
    """Rule of the TARGETS DAG -> package modules (relative paths) its script really
    imports, measured by importing (the rules' own code lists are not consulted)."""
    repo, workdir = built_copy
    dag = outputs_by_rule(repo, workdir)
    rules = workflow_rules(repo / "Snakefile", tmp_path_factory.mktemp("copy_rules"))
    scripts = {name: script_file(repo / "Snakefile", rules[name]["script"]) for name in dag}
    imported = imported_package_files(sorted(set(scripts.values())))
    # the scripts import the installed package (this checkout): compare package-relative paths
    package = (REPO / "spinepipe").resolve()
    return {name: {str(Path(f).relative_to(package)) for f in imported[str(script)]
                   if Path(f).is_relative_to(package)} for name, script in scripts.items()}


@pytest.mark.slow
@pytest.mark.parametrize("module", ["geometry.py", "xref.py"])
def test_editing_a_deep_module_plans_exactly_the_rules_that_execute_it(built_copy, module,
                                                                        executed_modules):
    repo, workdir = built_copy
    dag = outputs_by_rule(repo, workdir)
    executes = {rule for rule, modules in executed_modules.items() if module in modules}
    assert executes, f"no rule of this DAG imports {module}: pick another module"
    edited = repo / "spinepipe" / module
    original = edited.read_text()
    try:
        edited.write_text(original + "\n# edited by test_code_inputs\n")
        # one dry run per rule, side by side (each is a snakemake process parsing the workflow)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            on_its_own = dict(zip(dag, pool.map(
                lambda item: planned_on_its_own(repo, workdir, *item), dag.items())))
        planned = {rule for rule, planned in on_its_own.items() if planned}
    finally:
        edited.write_text(original)
    assert planned == executes, {"planned, not executing it": planned - executes,
                                 "executing it, not planned": executes - planned}


def test_code_digest_changes_with_any_module_of_the_closure(tmp_path):
    package = tmp_path / "spinepipe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "top.py").write_text("from spinepipe import deep\n")
    (package / "deep.py").write_text("x = 1\n")
    (package / "other.py").write_text("y = 1\n")
    before = code_digest(package / "top.py")
    (package / "other.py").write_text("y = 2\n")  # not imported: same digest
    assert code_digest(package / "top.py") == before
    (package / "deep.py").write_text("x = 2\n")
    assert code_digest(package / "top.py") != before
