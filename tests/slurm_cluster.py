"""A private SLURM cluster of one or more nodes on loopback, for tests: munged, slurmctld and one slurmd per node
started as root from a temporary directory, found by clients through SLURM_CONF, and stopped by PID. Debian packages
are installed if missing.

Several nodes on one machine: Debian's slurmd (22.05) runs once per node with `-N <node>`, each with its own port,
spool, log and loopback address (node1 at 127.0.0.2, node2 at 127.0.0.3, ...). Node names must resolve, as a real
cluster's DNS makes them: Lightning's SLURM environment takes the rendezvous address (MASTER_ADDR) from the first
name in SLURM_NODELIST. Each slurmd therefore runs in a private mount namespace whose /etc/hosts adds the nodes; the
jobs it starts inherit it, and the machine's own /etc/hosts is never touched."""
from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol"]
L2M_BIN = str(Path(sys.executable).parent)  # where the `l2m` console script lives
UNFINISHED = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SIGNALING", "REQUEUED", "RESIZING", "SUSPENDED")


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF: what a client of this cluster runs with
    nodes: list[str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # by log name, in the order started

    def scontrol(self, *args: str) -> str:
        out = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:  # with scontrol's own message (e.g. a job SLURM no longer knows)
            raise RuntimeError(f"scontrol {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key → value (the first '=' of each word splits it)."""
        fields = self.scontrol("show", "job", "--oneliner", job_id).split()
        return dict(word.split("=", 1) for word in fields if "=" in word)

    def live_job(self, job_id: str, log: Path) -> dict[str, str]:
        """The job's record while it is queued or running; one that ended fails the test with its state and log."""
        job = self.job(job_id)
        if job["JobState"] not in UNFINISHED:
            tail = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise AssertionError(f"job {job_id} ended {job['JobState']}, exit code {job['ExitCode']}, reason {job.get('Reason')}:\n{tail}")
        return job

    def submit(self, cwd: Path, *args: str) -> str:
        """`l2m submit` with these arguments, from cwd: the job id."""
        env = {**self.env, "PATH": f"{L2M_BIN}:{self.env['PATH']}"}
        out = subprocess.run(["l2m", "submit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return re.fullmatch(r"submitted job (\d+): .*\n", out.stdout).group(1)

    def idle(self) -> bool:
        """Every node idle, not IDLE+COMPLETING: no job's processes are left on any."""
        return _node_state(self).count("State=IDLE ") == len(self.nodes)

    def wait_for_job(self, job_id: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        # SIGNALING: a job that ends within its --signal window is still being sent the signal
        while (job := self.job(job_id))["JobState"] in UNFINISHED:
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


def _address(index: int) -> str:
    return f"127.0.0.{index + 2}"  # 127.0.0.1 is the controller's


def _slurm_conf(root: Path, munge_socket: Path, nodes: list[str]) -> str:
    # Every node offers the whole machine (its CPUs and half its memory): nodes share the cores.
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    node_lines = "\n".join(f"NodeName={node} NodeAddr={_address(i)} Port={_free_port()} CPUs={os.cpu_count()} RealMemory={memory_mb} "
                           "State=UNKNOWN" for i, node in enumerate(nodes))
    # A random first job id: Lightning derives each job's rendezvous port from its id (15000 + its last four digits), so
    # clusters of other test sessions on this machine, numbering from 1 too, would take the same ports. MinJobAge: an
    # ended job's record is kept an hour, not SLURM's 5 minutes, for tests that read it long after it ended.
    return f"""ClusterName=l2mtest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={_free_port()}
MinJobAge=3600
FirstJobId={random.randrange(1000, 10000)}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
{node_lines}
PartitionName=debug Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def _program(name: str) -> str:
    return shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")


def _start(cluster: Cluster, log_name: str, *command: str) -> None:
    log = open(cluster.root / f"{log_name}.out", "w")
    cluster.processes[log_name] = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own copy


def _wait_until(ready, what: str, cluster: Cluster, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [name for name, p in cluster.processes.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = {f.name: f.read_text()[-1500:] for f in sorted(cluster.root.glob("*.out")) + sorted(cluster.root.glob("*.log"))}
            raise RuntimeError(f"{what}: {'exited: ' + str(dead) if dead else 'timed out'}\n{logs}")
        time.sleep(0.3)


def start_cluster(root: Path, nodes: int = 1) -> Cluster:
    """Start the daemons; the caller stops them with stop_cluster."""
    names = [f"node{i + 1}" for i in range(nodes)]
    for sub in ("state", "munge", *(f"spool/{node}" for node in names)):
        (root / sub).mkdir(parents=True)
    (root / "munge").chmod(0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge" / "munge.socket"
    (root / "slurm.conf").write_text(_slurm_conf(root, munge_socket, names))
    hosts = root / "hosts"
    hosts.write_text(Path("/etc/hosts").read_text() + "".join(f"\n{_address(i)} {node}" for i, node in enumerate(names)) + "\n")
    cluster = Cluster(root, {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}, names)
    try:
        _start(cluster, "munged", _program("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
               f"--pid-file={root}/munge/munged.pid", f"--seed-file={root}/munge/munged.seed", f"--log-file={root}/munge/munged.log")
        _wait_until(munge_socket.exists, "munged", cluster)
        _start(cluster, "slurmctld", _program("slurmctld"), "-D", "-i")  # -i: no saved state to recover
        for node in names:  # unshare and sh exec: the PID kept is slurmd's
            _start(cluster, f"slurmd-{node}", _program("unshare"), "--mount", "--propagation=private", "sh", "-c",
                   'mount --bind "$0" /etc/hosts && exec "$1" -D -N "$2"', str(hosts), _program("slurmd"), node)
        _wait_until(cluster.idle, "slurmd registering as idle", cluster)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _queue(cluster: Cluster) -> str:
    return subprocess.run(["squeue", "--noheader"], env=cluster.env, capture_output=True, text=True, timeout=30).stdout.strip()


def _node_state(cluster: Cluster) -> str:
    out = subprocess.run(["scontrol", "show", "node"], env=cluster.env, capture_output=True, text=True, timeout=30)
    return out.stdout


def stop_cluster(cluster: Cluster) -> None:
    # Jobs first: a job step outlives its slurmd, and a test that failed mid-job would leave its ranks training.
    controller = cluster.processes.get("slurmctld")
    if controller is not None and controller.poll() is None and \
            subprocess.run(["scancel", "--user", str(os.getuid())], env=cluster.env, capture_output=True, timeout=60).returncode == 0:
        deadline = time.monotonic() + 30
        while _queue(cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
    for process in reversed(cluster.processes.values()):  # slurmd, slurmctld, then munged, which they authenticate through
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cluster_fixture(tmp_path_factory, nodes: int):
    if reason := _install():
        pytest.skip(reason)
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"), nodes)
    yield cluster
    stop_cluster(cluster)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    yield from _cluster_fixture(tmp_path_factory, nodes=1)


@pytest.fixture(scope="session")
def slurm_two_nodes(tmp_path_factory):
    yield from _cluster_fixture(tmp_path_factory, nodes=2)
