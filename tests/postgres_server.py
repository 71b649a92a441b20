"""A throw-away PostgreSQL server on localhost, for tests (not a test module).

``start_postgres()`` installs Debian's ``postgresql`` package if its binaries are missing,
initialises a database cluster in a new temporary folder owned by user ``postgres``, starts
it with ``pg_ctl`` on a free TCP port of 127.0.0.1 (and a socket folder of its own, so that
it never meets a system PostgreSQL), and creates a database and a password-protected role
for MLflow. It returns a ``PostgresServer``: ``.uri`` is the SQLAlchemy URI MLflow takes as
``--backend-store-uri`` (``postgresql+psycopg2://mlflow:<password>@127.0.0.1:<port>/mlflow``;
the driver is psycopg2-binary, requirements.txt), ``.psql(sql)`` runs a statement as the
superuser, ``.stop()`` stops the server (``pg_ctl stop -m fast``, then the postmaster's pid)
and removes the folder.

``PostgresUnavailable`` means PostgreSQL cannot be had on this machine at all (not root, no
apt-get, the package does not install): callers skip on it. A server that does not come up
raises ``RuntimeError`` with its log.

Facts this relies on (Debian 12, PostgreSQL 15): the package does not start a server without
systemd (policy-rc.d), and its binaries are under /usr/lib/postgresql/<version>/bin, not on
PATH; the server refuses to run as root, so initdb and pg_ctl run as ``postgres`` (runuser),
which must be able to enter every folder above the data directory (pytest's
/tmp/pytest-of-root is 0700, hence a folder of its own under /tmp).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from system_packages import apt_install, stop_pid

PACKAGES = ["postgresql"]
USER = "postgres"  # the system account the Debian package creates


class PostgresUnavailable(Exception):
    """PostgreSQL cannot be installed or started on this machine (the caller should skip)."""


def _run(cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _bin_dir() -> Path | None:
    """The newest installed server's bin folder (the one holding initdb and pg_ctl)."""
    found = [d for d in Path("/usr/lib/postgresql").glob("*/bin")
             if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in d.parent.name.split(".") if p.isdigit())
    return max(found, key=version) if found else None


def ensure_installed() -> Path:
    """Install Debian's postgresql unless a server is already there; its bin folder."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    why = apt_install(PACKAGES)
    if why is not None:
        raise PostgresUnavailable(f"PostgreSQL is not installed and {why}")
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("postgresql installed, but no initdb/pg_ctl under "
                                  "/usr/lib/postgresql/*/bin")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*cmd: str | Path) -> list[str]:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", USER, "--", *map(str, cmd)]


@dataclass
class PostgresServer:
    directory: Path      # owned by postgres: data/, socket/, postgres.log
    bin_dir: Path
    port: int
    database: str
    user: str
    password: str
    pid: int | None = None   # the postmaster's
    startup_s: float = 0.0   # initdb + start + role and database

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the MLflow database (for ``mlflow server --backend-store-uri``)."""
        return (f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.database}")

    def logs(self) -> str:
        return self.log.read_text()[-3000:] if self.log.is_file() else ""

    def psql(self, sql: str, database: str = "postgres", timeout: float = 30) -> str:
        """Run ``sql`` as the superuser over the server's own socket; its output (-At)."""
        result = _run(_as_postgres(self.bin_dir / "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
                                   "-h", self.socket_dir, "-p", str(self.port), "-d", database,
                                   "-c", sql), timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed ({sql[:80]!r}): {result.stderr.strip()}")
        return result.stdout.strip()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are closed) and remove its folder."""
        if self.pid is not None:
            try:
                _run(_as_postgres(self.bin_dir / "pg_ctl", "-D", self.data, "-m", "fast", "-w",
                                  "-t", "30", "stop"), timeout=40)
            except subprocess.TimeoutExpired:
                pass
            stop_pid(self.pid)
            self.pid = None
        shutil.rmtree(self.directory, ignore_errors=True)





def start_postgres(parent: Path | str | None = None, database: str = "mlflow",
                   user: str = "mlflow", timeout: float = 60) -> PostgresServer:
    """Install (if needed), initialise and start a PostgreSQL server on 127.0.0.1 with
    ``database`` owned by role ``user`` (random password); ``parent`` (default the system
    temporary folder) must be enterable by user postgres."""
    if os.geteuid() != 0:
        raise PostgresUnavailable("initdb and pg_ctl run as user postgres, which needs root")
    started = time.monotonic()
    bin_dir = ensure_installed()
    try:
        account = pwd.getpwnam(USER)
    except KeyError as error:
        raise PostgresUnavailable(f"no system user {USER!r} (the package creates it)") from error
    directory = Path(tempfile.mkdtemp(prefix="spinepipe-postgres-", dir=parent))
    server = PostgresServer(directory, bin_dir, _free_port(), database, user,
                            secrets.token_hex(16))
    try:
        for folder in (directory, server.socket_dir):
            folder.mkdir(exist_ok=True)
            os.chown(folder, account.pw_uid, account.pw_gid)
            folder.chmod(0o700)
        if _run(_as_postgres("test", "-w", directory), timeout=10).returncode != 0:
            raise RuntimeError(f"user {USER} cannot write {directory} (a folder above it is "
                               f"closed to it): pass another parent")
        # Local (socket) connections: the OS user must match the role (peer); TCP: password.
        result = _run(_as_postgres(bin_dir / "initdb", "-D", server.data, "-U", USER,
                                   "--encoding=UTF8", "--locale=C", "--auth-local=peer",
                                   "--auth-host=scram-sha-256", "--no-sync"), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (rc {result.returncode}): "
                               f"{(result.stdout + result.stderr)[-2000:]}")
        options = (f"-p {server.port} -k {server.socket_dir} -c listen_addresses=127.0.0.1 "
                   f"-c max_connections=100")
        result = _run(_as_postgres(bin_dir / "pg_ctl", "-D", server.data, "-l", server.log,
                                   "-o", options, "-w", "-t", str(int(timeout)), "start"),
                      timeout=timeout + 10)
        pid_file = server.data / "postmaster.pid"
        if result.returncode != 0 or not pid_file.is_file():
            raise RuntimeError(f"pg_ctl start failed (rc {result.returncode}): "
                               f"{(result.stdout + result.stderr)[-1500:]}\n{server.logs()}")
        server.pid = int(pid_file.read_text().split()[0])
        server.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{server.password}'")
        server.psql(f"CREATE DATABASE {database} OWNER {user}")
    except BaseException:
        server.stop()
        raise
    server.startup_s = time.monotonic() - started
    return server


if __name__ == "__main__":  # manual check: start, connect as the MLflow role, stop
    import sqlalchemy

    pg = start_postgres()
    try:
        print(f"started in {pg.startup_s:.1f} s: {pg.uri}")
        with sqlalchemy.create_engine(pg.uri).connect() as connection:
            print(connection.execute(sqlalchemy.text("select current_user, version()")).one())
    finally:
        pg.stop()
