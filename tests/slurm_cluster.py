"""A private one-node SLURM cluster on loopback, for tests: munged, slurmctld and slurmd started as root from a
temporary directory, found by clients through SLURM_CONF, and stopped by PID. Debian packages are installed if missing."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol"]


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: what a client of this cluster runs with
    processes: list[subprocess.Popen] = field(default_factory=list)

    def scontrol(self, *args: str) -> str:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, check=True, timeout=30).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key → value (the first '=' of each word splits it)."""
        fields = self.scontrol("show", "job", "--oneliner", job_id).split()
        return dict(word.split("=", 1) for word in fields if "=" in word)

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["JobState"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['JobState']} after {timeout} s")
            time.sleep(1)
        return job


def _installed() -> bool:
    return all(shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") for name in DAEMONS)


def _install() -> str | None:
    """None when installed, else why not."""
    if _installed():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "SLURM is not installed, and installing it needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:  # a stale package index: refresh it once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        out = subprocess.run(install, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            return f"cannot install {' '.join(PACKAGES)}: {out.stderr.strip().splitlines()[-1:]}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, munge_socket: Path) -> str:
    host = socket.gethostname()
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    return f"""ClusterName=l2mtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _start(cluster: Cluster, name: str, *args: str) -> None:
    log = open(cluster.root / f"{name}.out", "w")
    cluster.processes.append(subprocess.Popen([shutil.which(name, path="/usr/sbin:/sbin:/usr/bin"), *args], env=cluster.env,
                                              stdout=log, stderr=subprocess.STDOUT))
    log.close()  # the child holds its own copy


def _wait_until(ready, what: str, cluster: Cluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.args[0] for p in cluster.processes if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = {f.name: f.read_text()[-1500:] for f in sorted(cluster.root.glob("*.out")) + sorted(cluster.root.glob("*.log"))}
            raise RuntimeError(f"{what}: {'exited: ' + str(dead) if dead else 'timed out'}\n{logs}")
        time.sleep(0.3)


def start_cluster(root: Path) -> Cluster:
    """Start the daemons; the caller stops them with stop_cluster."""
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(parents=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    (root / "slurm.conf").write_text(_slurm_conf(root, munge_socket))
    cluster = Cluster(root, {**os.environ, "SLURM_CONF": str(root / "slurm.conf")})
    try:
        _start(cluster, "munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
               f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed", f"--log-file={root}/munge/munged.log")
        _wait_until(munge_socket.exists, "munged", cluster)
        _start(cluster, "slurmctld", "-D", "-i")  # -i: no saved state to recover
        _start(cluster, "slurmd", "-D")
        _wait_until(lambda: "State=IDLE" in _node_state(cluster), "slurmd registering as idle", cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _node_state(cluster: Cluster) -> str:
    out = subprocess.run(["scontrol", "show", "node"], env=cluster.env, capture_output=True, text=True, timeout=30)
    return out.stdout


def stop_cluster(cluster: Cluster) -> None:
    for process in reversed(cluster.processes):  # slurmd, slurmctld, then munged, which they authenticate through
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if reason := _install():
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    stop_cluster(cluster)
