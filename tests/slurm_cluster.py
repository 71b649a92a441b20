"""A real single-node Slurm cluster on localhost, for tests (not a test module).

``start_cluster(directory)`` installs the Debian packages if they are missing, starts munged
(as user ``munge``), slurmctld and slurmd (as root) with a slurm.conf written into
``directory`` and returns a ``SlurmCluster`` whose ``env`` points Slurm's commands at that
configuration (``SLURM_CONF``). ``SlurmCluster.stop()`` cancels leftover jobs and stops the
daemons by pid, slurmd first and munged last (munged only if this module started it).

SLURM_CONF alone is not enough: inside a job, snakemake's jobstep plugin strips every
``SLURM_*`` variable but the job's identity from the environment of its ``srun``, so that
srun looks for /etc/slurm/slurm.conf and then for /run/slurm/conf/slurm.conf. slurmd
therefore runs "configless" (``--conf-server``): it fetches the configuration from
slurmctld and links /run/slurm/conf to its copy, where the job steps find it; nothing is
written under /etc, and the start is refused (skipped) where /etc/slurm/slurm.conf exists.

``SlurmUnavailable`` means Slurm cannot be had on this machine at all (not root, no apt-get,
the packages do not install, a system Slurm configuration in the way): callers skip on it. Any other failure (a daemon that does not
come up) raises ``RuntimeError`` with the daemon logs, because on a machine where the
packages install the cluster is expected to work.

Facts this relies on (checked on Debian 12, Slurm 22.05): no systemd, so the packages do not
start their daemons; a VM without cgroups needs ``proctrack/linuxproc`` and ``task/none``;
without ``DefMemPerCPU`` a job that asks for no memory takes the whole node; without slurmdbd
``sacct`` fails, so clients must check job states with ``squeue --states=all`` (finished
jobs stay listed for ``MinJobAge`` seconds).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from system_packages import apt_install, stop_pid

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
BINARIES = ["munged", "munge", "unmunge", "slurmctld", "slurmd", "sinfo", "squeue", "sbatch",
            "srun", "scontrol"]
SBIN = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
# Where Slurm clients look for the configuration that a configless slurmd fetched.
CONFIGLESS_LINK = Path("/run/slurm/conf")


class SlurmUnavailable(Exception):
    """Slurm cannot be installed or started on this machine (the caller should skip)."""


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return shutil.which(name, path=path)


def _run(cmd: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def ensure_installed() -> None:
    """Install munge and Slurm with apt-get unless their binaries are already there."""
    if all(_which(b) for b in BINARIES):
        return
    why = apt_install(PACKAGES)
    if why is not None:
        raise SlurmUnavailable(f"Slurm is not installed and {why}")
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise SlurmUnavailable(f"installed, but {', '.join(missing)} not found")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pid_from(pid_file: Path, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            time.sleep(0.1)
    return None


def _munge_works() -> bool:
    munge, unmunge = _which("munge"), _which("unmunge")
    if not (munge and unmunge and MUNGE_SOCKET.exists()):
        return False
    try:
        cred = _run([munge, "-n"], timeout=10)
        if cred.returncode != 0:
            return False
        return _run([unmunge], timeout=10, input=cred.stdout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _start_munged() -> int | None:
    """Start munged as user munge; return its pid, or None when one already answers."""
    if _munge_works():
        return None
    user = pwd.getpwnam("munge")
    for directory, mode in ((Path("/run/munge"), 0o755), (Path("/var/lib/munge"), 0o711),
                            (Path("/var/log/munge"), 0o700)):
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, user.pw_uid, user.pw_gid)
        directory.chmod(mode)
    if not MUNGE_KEY.is_file():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        mungekey = _which("mungekey")
        if mungekey:
            _run([mungekey, "--create", f"--keyfile={MUNGE_KEY}"], timeout=30)
        if not MUNGE_KEY.is_file():
            MUNGE_KEY.write_bytes(os.urandom(1024))
    os.chown(MUNGE_KEY, user.pw_uid, user.pw_gid)
    MUNGE_KEY.chmod(0o400)
    pid_file = Path("/run/munge/munged.pid")
    pid_file.unlink(missing_ok=True)
    # A socket left by a killed munged makes a new one refuse to start; --force clears it.
    result = _run([_which("runuser") or "/usr/sbin/runuser", "-u", "munge", "--",
                   _which("munged"), "--force"], timeout=30)
    pid = _pid_from(pid_file, timeout=10)
    deadline = time.monotonic() + 10
    while pid is not None and not _munge_works() and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid is None or not _munge_works():
        log = Path("/var/log/munge/munged.log")
        tail = log.read_text()[-1500:] if log.is_file() else ""
        raise RuntimeError(f"munged did not start: {result.stdout}{result.stderr}\n{tail}")
    return pid


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


@dataclass
class SlurmCluster:
    directory: Path
    conf: Path
    node: str
    cpus: int
    memory_mb: int
    port: int  # slurmctld's
    pids: dict[str, int] = field(default_factory=dict)  # daemon -> pid, in start order

    @property
    def env(self) -> dict[str, str]:
        """Environment for Slurm clients (and everything they start, jobs included)."""
        path = os.environ.get("PATH", "")
        extra = [d for d in SBIN if d not in path.split(os.pathsep)]
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": os.pathsep.join([path, *extra]) if path else os.pathsep.join(extra)}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return _run(list(cmd), timeout=timeout, env=self.env)

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "-h", "-o", "%T", timeout=10).stdout.strip()
        except subprocess.TimeoutExpired:
            return ""

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            log = self.directory / name
            if log.is_file():
                parts.append(f"--- {name} ---\n{log.read_text()[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop the daemons by pid: slurmd, slurmctld and
        munged (if ours). A job still running would outlive slurmd (slurmstepd does)."""
        if "slurmctld" in self.pids:
            try:
                self.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, timeout=15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self.run(
                        "squeue", "-h", "--states=PENDING,RUNNING,COMPLETING",
                        timeout=10).stdout.strip():
                    time.sleep(0.5)
            except subprocess.TimeoutExpired:
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                stop_pid(pid)
        # slurmd leaves its link to the fetched configuration behind.
        if CONFIGLESS_LINK.is_symlink() and str(self.directory) in os.readlink(CONFIGLESS_LINK):
            CONFIGLESS_LINK.unlink()


def write_conf(directory: Path, node: str, cpus: int, memory_mb: int, port: int) -> Path:
    for sub in ("state", "spool"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    conf = directory / "slurm.conf"
    conf.write_text(f"""\
# Written by tests/slurm_cluster.py: one node on localhost, no cgroups, no accounting.
ClusterName=spinepipe-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={port}
SlurmctldParameters=enable_configless
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=3600
MailProg=/bin/true
StateSaveLocation={directory / 'state'}
SlurmdSpoolDir={directory / 'spool'}
SlurmctldPidFile={directory / 'slurmctld.pid'}
SlurmdPidFile={directory / 'slurmd.pid'}
SlurmctldLogFile={directory / 'slurmctld.log'}
SlurmdLogFile={directory / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def start_cluster(directory: Path, timeout: float = 60) -> SlurmCluster:
    """Install (if needed) and start munged, slurmctld and slurmd; wait for an idle node."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("starting slurmctld/slurmd and munged needs root")
    ensure_installed()
    directory.mkdir(parents=True, exist_ok=True)
    # Slurm daemons and job steps must be able to enter the directory.
    directory.chmod(0o755)
    node = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = max(1000, int(_mem_total_mb() * 0.9))
    port = _free_port()
    cluster = SlurmCluster(directory, write_conf(directory, node, cpus, memory_mb, port), node,
                           cpus, memory_mb, port)
    if SYSTEM_CONF.exists():
        # Job steps would read it: the jobstep plugin drops SLURM_CONF from srun's environment.
        raise SlurmUnavailable(f"{SYSTEM_CONF} exists (a configured Slurm); not touching it")
    try:
        munged = _start_munged()
        if munged is not None:
            cluster.pids["munged"] = munged
        for daemon, args in (("slurmctld", ["-f", str(cluster.conf)]),
                             ("slurmd", ["--conf-server", f"127.0.0.1:{cluster.port}"])):
            result = _run([_which(daemon), *args], timeout=30, env=cluster.env)
            pid = _pid_from(directory / f"{daemon}.pid", timeout=15)
            if pid is None:
                raise RuntimeError(f"{daemon} did not start (rc {result.returncode}): "
                                   f"{result.stdout}{result.stderr}\n{cluster.logs()}")
            cluster.pids[daemon] = pid
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = cluster.node_state()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {timeout:.0f} s (sinfo: {state!r})\n"
                           f"{cluster.logs()}")
    except BaseException:
        cluster.stop()
        raise
