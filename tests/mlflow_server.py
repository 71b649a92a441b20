"""An MLflow tracking server on localhost, for tests (not a test module).

``start_mlflow_server(backend_store_uri, directory)`` runs ``mlflow server`` (the venv's
MLflow) on a free port of 127.0.0.1 with the given backend store (e.g. a PostgreSQL URI
from tests/postgres_server.py) and proxied artifacts under ``directory/artifacts``, waits
until ``GET /health`` answers and returns an ``MlflowServer``: ``.uri`` is the tracking URI
(``http://127.0.0.1:<port>``), ``.startup_s`` how long it took to answer, ``.stop()`` ends
every process it started.

What ``mlflow server`` (MLflow 3.17) starts: the CLI process and a uvicorn server with
``--workers`` worker processes (default 4; 1 here unless asked), and, unless
MLFLOW_SERVER_ENABLE_JOB_EXECUTION is false, job-runner processes (huey consumers; 9 more
processes here), whose job subprocesses start sessions of their own. The job runner is off
here unless ``job_execution=True`` (the pipeline submits no server-side jobs). The server
runs in a new session (process group): ``stop()`` sends SIGTERM to the group and to every
descendant found under /proc (those in other sessions included), then SIGKILL to whatever
is left; checked with the job runner on and off: nothing is left.

Start-up on a busy 2-core machine: 15-16 s to the first /health answer without the job
runner, about 24 s with it, the schema migration of an empty PostgreSQL database included
(creating the tables takes about 1 s; the rest is importing MLflow twice: CLI and worker).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name (field 2) may hold spaces and parentheses: split after its last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class MlflowServer:
    process: subprocess.Popen
    port: int
    directory: Path
    startup_s: float = 0.0  # from the start to the first answer of /health

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "mlflow-server.log"

    def logs(self) -> str:
        return self.log.read_text()[-4000:] if self.log.is_file() else ""

    def pids(self) -> list[int]:
        """The server's processes: the CLI and all its descendants."""
        return [self.process.pid, *descendants(self.process.pid)]

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the process group and every descendant, then SIGKILL to the rest."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = sorted(set(pids) | set(descendants(self.process.pid)))
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.process.poll()
                if not any(_alive(pid) for pid in pids):
                    break
                time.sleep(0.2)
            else:
                continue
            break
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def health(uri: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_mlflow_server(backend_store_uri: str, directory: Path, workers: int = 1,
                        job_execution: bool = False, timeout: float = 180,
                        env: dict[str, str] | None = None) -> MlflowServer:
    """Start ``mlflow server`` on 127.0.0.1 and wait until it answers ``/health``; raises
    RuntimeError with the server's log when it exits or does not answer in ``timeout``.
    ``job_execution``: also start MLflow's job runner (GenAI evaluation jobs, which the
    pipeline never submits; off, the server starts faster and runs as two processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    artifacts = directory / "artifacts"
    artifacts.mkdir(exist_ok=True)
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", backend_store_uri,
           # artifacts go through the server (mlflow-artifacts:/ URIs), so clients need no
           # access to the folder; a cluster would point this at shared or object storage
           "--serve-artifacts", "--artifacts-destination", str(artifacts),
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    log = directory / "mlflow-server.log"
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=directory,
                                   env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION":
                                        str(job_execution).lower(), **(env or {})},
                                   start_new_session=True)
    server = MlflowServer(process, port, directory)
    try:
        deadline = started + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited (rc {process.returncode}):\n"
                                   f"{server.logs()}")
            if health(server.uri):
                server.startup_s = time.monotonic() - started
                return server
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer {server.uri}/health within "
                           f"{timeout:.0f} s:\n{server.logs()}")
    except BaseException:
        server.stop()
        raise


if __name__ == "__main__":  # manual check: PostgreSQL, then the server on it, a run, stop
    import tempfile

    import mlflow
    from postgres_server import start_postgres

    pg = start_postgres()
    try:
        print(f"postgres up in {pg.startup_s:.1f} s")
        for attempt, jobs in (("first start (schema migration), job runner", True),
                              ("second start, no job runner", False)):
            server = start_mlflow_server(pg.uri, Path(tempfile.mkdtemp()), job_execution=jobs)
            try:
                print(f"mlflow server {attempt}: {server.startup_s:.1f} s, pids {server.pids()}")
                client = mlflow.MlflowClient(server.uri)
                experiment = client.get_experiment_by_name("smoke") or \
                    client.get_experiment(client.create_experiment("smoke"))
                run = client.create_run(experiment.experiment_id, run_name="smoke")
                client.log_metric(run.info.run_id, "loss", 1.0, step=0)
                client.set_terminated(run.info.run_id)
                print(len(client.search_runs([experiment.experiment_id])), "runs")
            finally:
                pids = server.pids()
                server.stop()
                print("left alive:", [p for p in pids if _alive(p)])
    finally:
        pg.stop()
