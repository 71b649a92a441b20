"""The MLflow UI (``mlflow ui``, MLflow 3.17) on a run tree shaped like the pipeline's, opened in
headless Chromium (tests/browser.py).

Which view an experiment opens on (checked in the bundled JS of mlflow 3.17.0,
``mlflow/server/js/build/static/js``; notes in the module constants below):

* the experiment *kind* is not read from the tag ``mlflow.experimentKind`` any more: a hard-coded
  feature flag (``89511.Z0 = () => true`` in main.*.js) makes the UI derive it from the global
  *workflow type* (the "GenAI" / "Model training" switch at the top of the sidebar) instead.
  The workflow type is the URL query parameter ``workflowType`` (``genai`` or
  ``machine_learning``), else localStorage ``mlflow.workflowType_v1`` (JSON string, written
  only when the user clicks the switch), else ``genai``;
* ``#/experiments/<id>`` redirects to the Overview tab (``/overview/usage``, the GenAI
  "Traces 0 ..." dashboard) in genai mode and to ``/runs`` in machine_learning mode;
  ``#/experiments/<id>/runs`` always shows the runs table, titled "Training runs" under the
  GenAI sidebar, or "Runs" under the "Model training" sidebar with
  ``workflowType=machine_learning``.

So the URL to give users is
``http://HOST:PORT/#/experiments/<id>/runs?workflowType=machine_learning``. The tag
``mlflow.experimentKind=custom_model_development`` ("Machine learning" in the UI's kind
selector) is still set here: the bundle keeps the code that reads it, behind that flag, but
3.17 ignores it.

The runs table is an ag-grid: each row is split into a pinned-left part (checkbox, "Run Name",
"Created") and a center part, both ``[role=row][row-index=N]``. Nesting is not ag-grid tree
data (every row is ``ag-row-level-0``): MLflow lists only top-level runs at first (the
"N matching runs" footer counts all), and a run with children gets an expander button
(``button[data-component-id$="runnamecellrenderer.tsx_46"]``) in its name cell; the name
cell's first inner ``div`` has an inline width of (nesting level + 1) x 24 px, so children
show indented below their parent once it is expanded.

``mlflow ui`` starts uvicorn workers, a job runner and huey consumers: the server is started
in its own session (process group) and the whole group is killed at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import browser  # noqa: E402  (tests/ is on sys.path: pytest rootdir-inserts test dirs)
import pytest

pytestmark = pytest.mark.slow

MLFLOW = Path(sys.executable).with_name("mlflow")
SERVER_START_TIMEOUT = 180.0  # the server takes ~50 s to come up on a loaded 2-core machine
PAGE_TIMEOUT = 90.0
STEP_TIMEOUT = 30.0

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# The URL the README gives; {base} is http://host:port, {eid} the experiment id.
RUNS_URL = "{base}/#/experiments/{eid}/runs?workflowType=machine_learning"

# The pipeline's run tree (README "Experiment tracking"), a fold or two of each kind.
ROOT = "pipeline"
LOCALIZE = ["localize/point/sagittal_t1/fold0", "localize/point/sagittal_t2/fold0"]
EVALUATE = "evaluate/localization"
QA = "qa"
TRAIN = "train/seed2024"
TRAIN_CHILDREN = ["train/seed2024/spinal/fold0", "train/seed2024/foraminal/fold0",
                  "evaluate/cv/seed2024", "evaluate/test/seed2024", "register/seed2024"]
ROOT_CHILDREN = [*LOCALIZE, EVALUATE, QA, TRAIN]
NEST_STEP_PX = 24  # the name cell's indent per nesting level (theme.spacing.lg)

# Texts of the GenAI overview (``#/experiments/<id>/overview/usage``), never on the runs page.
GENAI_OVERVIEW_TEXTS = ["Token Usage", "Tokens per Trace", "Cost Breakdown"]

NAME_CELL = '[role=gridcell][col-id="attributes.`Run Name`"]'
EXPANDER = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'

# The runs table's rows (in row-index order) as seen in their "Run Name" cells.
_ROWS_JS = r"""
const cells = Array.from(document.querySelectorAll('[role=row][row-index] ' + arguments[0]));
return cells.map(cell => {
    const row = cell.closest('[role=row]');
    const link = cell.querySelector('a[href*="/runs/"]');
    const indent = cell.querySelector('.ag-cell-value div[style*="width"]');
    const expander = cell.querySelector(arguments[1]);
    return {index: Number(row.getAttribute('row-index')),
            name: link ? link.textContent.trim() : cell.textContent.trim(),
            href: link ? link.getAttribute('href') : null,
            indent: indent ? parseFloat(indent.style.width) : null,
            expander: Boolean(expander)};
}).sort((a, b) => a.index - b.index);
"""


# --- the store ---------------------------------------------------------------------------------

def make_store(directory: Path) -> dict:
    """A SQLite tracking store with the pipeline's run tree; returns its uri, experiment id and
    {run name: run id}."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    eid = client.create_experiment("spinepipe",
                                   artifact_location=(directory / "artifacts").as_uri(),
                                   tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    runs: dict[str, str] = {}

    def run(name: str, parent: str | None = None, tags: dict | None = None,
            metrics: dict | None = None) -> str:
        """One job's run as the pipeline writes it: created, written and terminated at once
        (a parent is a finished container before its children are created)."""
        tags = dict(tags or {})
        if parent is not None:
            tags["mlflow.parentRunId"] = runs[parent]
        run_id = client.create_run(eid, run_name=name, tags=tags).info.run_id
        for step, value in enumerate([0.9, 0.6, 0.4] if metrics is None else []):
            client.log_metric(run_id, "val_loss", value, step=step)
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id)
        runs[name] = run_id
        return run_id

    run(ROOT, tags={"spinepipe.config_hash": "0123456789abcdef"}, metrics={})
    for name in LOCALIZE:
        run(name, ROOT)
    run(EVALUATE, ROOT, metrics={"test.sagittal_t2.point_error_mm_median": 2.1})
    run(TRAIN, ROOT, metrics={})
    for name in TRAIN_CHILDREN[:2]:
        run(name, TRAIN)
    run("evaluate/cv/seed2024", TRAIN, metrics={"cv_score": 0.71, "cv_score_annotated_points": 0.64})
    run("evaluate/test/seed2024", TRAIN, metrics={"cv_score": 0.71, "test_score": 0.69})
    run("register/seed2024", TRAIN, metrics={})
    run(QA, ROOT, metrics={})
    return {"uri": uri, "experiment_id": eid, "runs": runs}


# --- the server --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(state, pgid, session id) of a process from /proc/<pid>/stat, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[3])


def _proc_text(pid: str, name: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def live_processes(session: int, marker: str) -> list[str]:
    """Processes (not zombies) still in the server's session / process group, or whose command
    line or environment names marker (the store's path): "pid state cmdline" each."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        cmdline = _proc_text(pid, "cmdline")
        if session in stat[1:] or marker in cmdline or marker in _proc_text(pid, "environ"):
            found.append(f"{pid} {stat[0]} {cmdline[:200]}")
    return found


def _wait_gone(session: int, marker: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := live_processes(session, marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def mlflow_ui(uri: str, log: Path, marker: str) -> Iterator[dict]:
    """Run ``mlflow ui`` on a free port in its own session; yield {"base", "process", "pgid"};
    on exit SIGTERM its process group, SIGKILL what is left after 8 s (the huey consumers
    outlast SIGTERM by more than 10 s), and reap it."""
    port = free_port()
    cmd = [str(MLFLOW), "ui", "--backend-store-uri", uri, "--port", str(port),
           "--host", "127.0.0.1"]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    pgid = process.pid  # start_new_session: pid == pgid == sid
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"mlflow ui exited with {process.returncode} before "
                                     f"serving: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow ui did not answer {base}/health within "
                                     f"{SERVER_START_TIMEOUT:g} s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"base": base, "process": process, "pgid": pgid}
    finally:
        _signal_group(pgid, signal.SIGTERM)
        if _wait_gone(pgid, marker, 8):
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        _wait_gone(pgid, marker, 10)


# --- the browser -------------------------------------------------------------------------------

def rows(driver) -> list[dict]:
    """The runs table's rows: {index, name, href, indent (px), expander} in row order."""
    return driver.execute_script(_ROWS_JS, NAME_CELL, EXPANDER)


def describe(driver) -> str:
    try:
        text = driver.execute_script("return document.body ? document.body.innerText : ''")
        return (f"url {driver.current_url}, rows "
                f"{[(r['name'], r['indent'], r['expander']) for r in rows(driver)]}, "
                f"page text {' | '.join(text.split(chr(10)))[:800]!r}")
    except Exception as error:  # noqa: BLE001 - only for a message
        return f"page unavailable: {error!r}"


def wait_for(driver, condition, message: str, timeout: float = STEP_TIMEOUT):
    from selenium.common.exceptions import (
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException,
                                                 WebDriverException)).until(condition)
    except TimeoutException:
        raise AssertionError(f"{message} (after {timeout:g} s; {describe(driver)})") from None


def expand(driver, name: str, expect_rows: int) -> list[dict]:
    """Click the expander of the run `name`; wait until the table has expect_rows rows."""
    from selenium.common.exceptions import ElementClickInterceptedException
    from selenium.webdriver.common.by import By

    def button(d):
        for cell in d.find_elements(By.CSS_SELECTOR, f"[role=row][row-index] {NAME_CELL}"):
            links = cell.find_elements(By.CSS_SELECTOR, 'a[href*="/runs/"]')
            if links and links[0].get_attribute("textContent").strip() == name:
                found = cell.find_elements(By.CSS_SELECTOR, EXPANDER)
                return found[0] if found else None
        return None

    element = wait_for(driver, button, f"run {name!r} has no expander button")
    try:
        element.click()
    except ElementClickInterceptedException:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()
    return wait_for(driver, lambda d: len(shown := rows(d)) == expect_rows and shown,
                    f"expanding {name!r} did not show {expect_rows} rows")


# --- the test ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> dict:
    directory = tmp_path / "mlruns"
    directory.mkdir()
    return make_store(directory) | {"dir": directory}


def test_runs_table_shows_the_nested_pipeline_runs(store, chromium, tmp_path):
    eid, ids = store["experiment_id"], store["runs"]
    marker = str(store["dir"])
    all_names = [ROOT, *ROOT_CHILDREN, *TRAIN_CHILDREN]
    shot = tmp_path / "runs_table.png"

    with mlflow_ui(store["uri"], tmp_path / "mlflow_ui.log", marker) as server:
        url = RUNS_URL.format(base=server["base"], eid=eid)
        with browser.headless_chromium() as driver:
            driver.get(url)
            # the runs table (not the GenAI overview) with only the root run at the top level
            top = wait_for(driver, lambda d: (shown := rows(d)) and shown,
                           f"{url} shows no runs table", timeout=PAGE_TIMEOUT)
            fragment = driver.current_url.split("#", 1)[-1]
            assert fragment.startswith(f"/experiments/{eid}/runs?"), (
                f"{url} was redirected to {driver.current_url}, not the runs table")
            assert "workflowType=machine_learning" in fragment, driver.current_url
            text = driver.execute_script("return document.body.innerText")
            shown_overview = [t for t in GENAI_OVERVIEW_TEXTS if t in text]
            assert not shown_overview, (f"the GenAI overview is shown ({shown_overview}): "
                                        f"{describe(driver)}")
            assert driver.find_elements("css selector", '[data-testid="sort-header-Run Name"]'), (
                f"no 'Run Name' column header: {describe(driver)}")
            wait_for(driver, lambda d: f"{len(all_names)} matching runs"
                     in d.execute_script("return document.body.innerText"),
                     f"the footer does not count all {len(all_names)} runs")
            assert [r["name"] for r in top] == [ROOT], (
                f"only the root run should be listed at the top level: {top}")
            assert top[0]["expander"], f"the root run has no expander: {top}"
            assert top[0]["indent"] == NEST_STEP_PX, top
            assert top[0]["href"].endswith(f"/experiments/{eid}/runs/{ids[ROOT]}"), top

            # expanding the root shows its children one level in; only train has children
            shown = expand(driver, ROOT, 1 + len(ROOT_CHILDREN))
            assert shown[0]["name"] == ROOT, shown
            children = {r["name"]: r for r in shown[1:]}
            assert set(children) == set(ROOT_CHILDREN), shown
            for name, row in children.items():
                assert row["indent"] == 2 * NEST_STEP_PX, f"{name} not nested in {ROOT}: {row}"
                assert row["expander"] == (name == TRAIN), f"expander of {name}: {row}"
                assert row["href"].endswith(f"/runs/{ids[name]}"), row

            # expanding train shows its folds, evaluation and registration runs right below
            # it, one level further in
            shown = expand(driver, TRAIN, len(all_names))
            names = [r["name"] for r in shown]
            at = names.index(TRAIN)
            below = slice(at + 1, at + 1 + len(TRAIN_CHILDREN))
            assert set(names[below]) == set(TRAIN_CHILDREN), (
                f"the children of {TRAIN} are not listed below it: {names}")
            for row in shown[below]:
                assert row["indent"] == 3 * NEST_STEP_PX, f"{row['name']} is not nested: {row}"
                assert row["href"].endswith(f"/runs/{ids[row['name']]}"), row
            assert sorted(names) == sorted(all_names), names

            # the page was painted: the screenshot and the table's part of it are not blank
            png = driver.get_screenshot_as_png()
            shot.write_bytes(png)
            page = browser.pixel_stats(png)
            assert page["std"] > 0.02 and page["colors"] > 50, f"blank screenshot {shot}: {page}"
            box = driver.execute_script(
                "const r = document.querySelector('.ag-root').getBoundingClientRect();"
                "return [r.x, r.y, r.width, r.height].map(v => Math.round(v * devicePixelRatio));")
            x, y, w, h = box
            pixels = browser._decode_png(png)[max(y, 0):y + h, max(x, 0):x + w]
            table = browser.pixel_stats(pixels)
            assert w > 200 and h > 100 and table["std"] > 0.02, (
                f"the runs table's area {box} of {shot} is blank: {table}")

    left = live_processes(server["pgid"], marker)
    assert not left, f"mlflow ui processes left after killing its group: {left}"
    assert server["process"].returncode is not None, "mlflow ui was not reaped"
