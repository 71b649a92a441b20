"""envs/pipeline.yaml, the environment of every rule under ``snakemake --sdm conda``.

Snakemake creates that environment from a copy of the file under .snakemake/conda/, so the
file can name no path (``-r ../requirements.txt``, ``-e ..`` resolve against the copy): it
names every package of the runtime stack itself, at the versions requirements.txt and
constraints.txt give, conda-forge packages under their conda-forge names and the rest under
``pip:``. spinepipe is not installed there; the rule scripts import it from the workflow's
base directory, which Snakemake's script preamble puts on their sys.path (last test).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "envs" / "pipeline.yaml"

# requirements.txt entries only the test suite uses: not in the rules' environment
TEST_ONLY = {"pytest", "pytest-xdist", "filelock", "selenium", "ruff", "snakefmt"}  # tests and source checks only
# pip name -> conda-forge name, where the two differ (pip names canonicalized)
CONDA_NAMES = {
    "torch": "pytorch",
    "psycopg2-binary": "psycopg2",  # conda-forge builds psycopg2; -binary is a wheel-only name
    "opencv-python-headless": "py-opencv",
    "matplotlib": "matplotlib-base",  # pip's matplotlib; conda's `matplotlib` adds a Qt GUI
}
# conda entries that stand for no line of requirements.txt
CONDA_ONLY = {"python", "pip", "pytorch-cpu"}
CONDA_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")


def read_requirements(path: Path) -> dict[str, Requirement]:
    reqs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)  # an option line (-r, -c, -e) fails here, on purpose
            reqs[canonicalize_name(req.name)] = req
    return reqs


def runtime_requirements() -> dict[str, SpecifierSet]:
    """The rules' stack: requirements.txt less the test-only packages, each with the pins of
    constraints.txt added; a package constraints.txt pins that requirements.txt only pulls
    in (torchvision, through timm) is part of it at that pin."""
    specs = {
        name: req.specifier
        for name, req in read_requirements(REPO / "requirements.txt").items()
        if name not in TEST_ONLY
    }
    for name, con in read_requirements(REPO / "constraints.txt").items():
        if name not in TEST_ONLY:
            specs[name] = specs.get(name, SpecifierSet()) & con.specifier
    return specs


def load_env() -> tuple[dict, list[str], list[str]]:
    env = yaml.safe_load(ENV_FILE.read_text())
    conda: list[str] = []
    pip: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unknown dependency section {dep}"
            pip.extend(str(entry) for entry in dep["pip"])
        else:
            conda.append(str(dep))
    return env, conda, pip


def conda_entries(conda: list[str]) -> dict[str, str]:
    """conda-forge name -> the version part of its entry ('' when unversioned)."""
    entries = {}
    for entry in conda:
        match = CONDA_SPEC.match(entry.strip())
        assert match, f"{entry!r} is no conda package spec"
        name, version = match.group(1).lower(), match.group(2).strip()
        assert name not in entries, f"{name} is listed twice"
        entries[name] = version
    return entries


def pip_entries(pip: list[str]) -> dict[str, Requirement]:
    entries = {}
    for entry in pip:
        try:
            req = Requirement(entry)
        except InvalidRequirement as error:
            raise AssertionError(f"pip entry {entry!r} is not a package by name: {error}") from error
        name = canonicalize_name(req.name)
        assert name not in entries, f"{name} is listed twice under pip"
        entries[name] = req
    return entries


def test_env_file_is_conda_forge_yaml():
    env, conda, _ = load_env()
    assert env["channels"][0] == "conda-forge", env["channels"]
    assert "defaults" not in env["channels"], "defaults mixes Anaconda's builds in"
    python = conda_entries(conda).get("python")
    assert python, "the environment names its Python"
    version = Version(python.lstrip("=").replace("*", "0").rstrip("."))
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert version in SpecifierSet(requires), f"python {python} against requires-python {requires}"


def test_env_file_names_no_path():
    """Snakemake creates the env from a copy of this file: a path in it points elsewhere."""
    _, conda, pip = load_env()
    for entry in conda + pip:
        assert not entry.strip().startswith("-"), (
            f"{entry!r}: an option (-r/-c/-e) reads a file relative to the env file's copy"
        )
        assert not re.search(r"(^\.|/|\\|file:)", entry), f"{entry!r} names a path"
    for req in pip_entries(pip).values():
        assert req.url is None, f"{req} installs from {req.url}, not by name and version"


def test_every_runtime_requirement_is_in_the_env_at_its_version():
    _, conda, pip = load_env()
    in_conda, in_pip = conda_entries(conda), pip_entries(pip)
    problems = []
    for name, spec in sorted(runtime_requirements().items()):
        conda_name = CONDA_NAMES.get(name, name)
        where = [f"conda-forge {conda_name}"] * (conda_name in in_conda) + ["pip"] * (
            name in in_pip
        )
        if len(where) != 1:
            problems.append(
                f"{name}{spec}: listed {len(where)} times ({', '.join(where) or 'nowhere'})"
            )
            continue
        if name in in_pip:
            got = in_pip[name].specifier
        else:
            try:
                got = SpecifierSet(in_conda[conda_name])
            except InvalidSpecifier:
                problems.append(
                    f"{conda_name} {in_conda[conda_name]!r}: write the versions of "
                    f"requirements.txt ({spec}) with ==, >=, <, ..."
                )
                continue
        if got != spec:
            problems.append(
                f"{name}: env has {got or 'no version'}, requirements say {spec or 'any'}"
            )
    assert not problems, (
        "envs/pipeline.yaml against requirements.txt + constraints.txt:\n" + "\n".join(problems)
    )


def test_env_names_nothing_else():
    """No package the runtime stack does not list; in particular no test-only one."""
    _, conda, pip = load_env()
    runtime = runtime_requirements()
    pip_names = {CONDA_NAMES.get(name, name): name for name in runtime}
    extra = [
        name for name in conda_entries(conda) if name not in CONDA_ONLY and name not in pip_names
    ]
    extra += [name for name in pip_entries(pip) if name not in runtime]
    assert not extra, f"not in requirements.txt (or test-only): {extra}"


def test_torch_is_the_cpu_build():
    """conda-forge's pytorch-cpu metapackage holds pytorch to its CPU build (no CUDA)."""
    _, conda, _ = load_env()
    entries = conda_entries(conda)
    torch = runtime_requirements()["torch"]
    assert entries.get("pytorch-cpu") is not None, "pytorch-cpu pins the CPU build"
    assert SpecifierSet(entries["pytorch-cpu"]) == torch, (entries["pytorch-cpu"], torch)


@pytest.mark.slow
def test_rule_scripts_import_packages_of_the_workflow_directory(tmp_path):
    """What lets workflow_scripts/*.py import spinepipe in an env that does not install it:
    Snakemake's Python script preamble extends sys.path with the main process's sys.path,
    which holds the Snakefile's directory. A probe workflow laid out like this one (Snakefile,
    rules/, scripts in their own folder, a package beside the Snakefile, another working
    directory) shows the script importing the package from the workflow directory."""
    workflow = tmp_path / "workflow"
    (workflow / "rules").mkdir(parents=True)
    (workflow / "scripts").mkdir()
    (workflow / "probe_pkg_for_sdm").mkdir()
    (workflow / "probe_pkg_for_sdm" / "__init__.py").write_text("")
    (workflow / "Snakefile").write_text('include: "rules/probe.smk"\n')
    (workflow / "rules" / "probe.smk").write_text(
        'rule probe:\n    output: "probe.json"\n    script: "../scripts/probe.py"\n'
    )
    (workflow / "scripts" / "probe.py").write_text(
        "import json, sys\nimport probe_pkg_for_sdm\n"
        "json.dump({'module': probe_pkg_for_sdm.__file__, 'path': sys.path},"
        " open(snakemake.output[0], 'w'))\n"
    )
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(workflow / "Snakefile"),
            "-d",
            str(workdir),
            "--cores",
            "1",
            "probe",
        ],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    probe = json.loads((workdir / "probe.json").read_text())
    assert Path(probe["module"]).parent.parent == workflow, probe["module"]
    assert str(workflow) in probe["path"], probe["path"]
