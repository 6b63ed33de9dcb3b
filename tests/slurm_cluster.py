"""A throw-away SLURM cluster on this machine, for testing ``profiles/slurm`` against real daemons.

One node (this host, topology from ``slurmd -C``), one partition, no accounting, one fake GPU (a character device
made with ``mknod``; SLURM schedules it and sets ``CUDA_VISIBLE_DEVICES`` like for a real card).  Every file the
daemons write — configuration, state, spool, logs, pid files, the munge socket and key — lives under one
directory, and the controller and node daemon listen on free ports, so the cluster neither needs nor disturbs a
system-wide SLURM or munge.  The daemons are stopped by the PIDs in their pid files, never by name.

Debian's packages (``slurmctld slurmd slurm-client munge``, Slurm 22.05) are installed with apt when missing.

Used by ``tests/test_slurm.py``; also runnable by hand::

    python tests/slurm_cluster.py start /tmp/slurm-dev     # prints the SLURM_CONF to export
    SLURM_CONF=/tmp/slurm-dev/etc/slurm.conf sinfo
    python tests/slurm_cluster.py stop /tmp/slurm-dev

A ``TaskProlog`` appends ``<job id> <step id> <CUDA_VISIBLE_DEVICES or "unset">`` of every task that SLURM
launches to ``<root>/task_env.log``: what a job actually saw, not just what was requested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
CLIENTS = ["srun", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct"]
COMMANDS = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel", "munged"]


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (not root, no apt, no package); the test skips with this."""


def binary(name: str) -> str | None:
    """The absolute path of a command, also where /usr/sbin is not on PATH."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/usr/bin")


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if binary(c) is None]


def ensure_installed(timeout: float = 600) -> None:
    """Install Debian's Slurm and munge packages when a command is missing; ClusterUnavailable when that fails."""
    if not missing_commands():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM commands {missing_commands()} are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM commands {missing_commands()} are missing and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=timeout)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or missing_commands():
        raise ClusterUnavailable(
            f"apt-get install {' '.join(PACKAGES)} failed (rc {result.returncode}): {result.stderr.strip()[-500:]}"
        )


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def node_topology() -> dict[str, str]:
    """``slurmd -C``'s first line as {key: value} (NodeName, CPUs, Boards, ..., RealMemory)."""
    command = [binary("slurmd") or "slurmd", "-C"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return False


class SlurmCluster:
    """A one-node cluster whose every file lives under ``root``; ``start()`` then ``stop()``."""

    def __init__(self, root: Path, gpus: int = 1, min_job_age: int = 600, partition: str = "ci"):
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.min_job_age = min_job_age
        self.partition = partition
        self.etc = self.root / "etc"
        self.conf = self.etc / "slurm.conf"
        self.run_dir = self.root / "run"  # pid files and the munge socket
        self.log_dir = self.root / "log"
        self.spool_dirs = [self.root / "spool" / "ctld", self.root / "spool" / "d", self.root / "munge"]
        self.task_env_log = self.root / "task_env.log"
        self.bin = self.root / "bin"
        self.topology = node_topology()
        self.node = self.topology["NodeName"]
        self.cpus = int(self.topology["CPUs"])
        self.memory_mb = int(int(self.topology["RealMemory"]) * 0.85)  # what the node offers to jobs
        self.munge_key = self.root / "munge" / "munge.key"
        self.started: list[str] = []

    # ------------------------------------------------------------------ environment for the client commands
    @property
    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF and the client wrappers first on PATH: commands talk to this cluster.

        Snakemake's job step (snakemake-executor-plugin-slurm-jobstep) removes every SLURM_* variable, SLURM_CONF
        included, before it calls ``srun`` inside a job; on a real cluster srun then reads /etc/slurm/slurm.conf.
        Here the wrappers in ``<root>/bin`` (exported to the jobs with PATH) set SLURM_CONF again.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def command(self, *args: str, timeout: float = 30, check: bool = True) -> str:
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    # ------------------------------------------------------------------ configuration
    def _write_config(self) -> None:
        keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        topology = " ".join(f"{k}={self.topology[k]}" for k in keys if k in self.topology)
        ctld_port, d_port = _free_ports(2)
        for d in (self.etc, self.run_dir, self.log_dir, *self.spool_dirs, self.root / "dev"):
            d.mkdir(parents=True, exist_ok=True)
        devices = []
        for i in range(self.gpus):
            dev = self.root / "dev" / f"fakegpu{i}"
            if not dev.exists():
                try:  # a character device like /dev/null: SLURM rejects regular files as GPU files
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
                except OSError:
                    dev = Path("/dev/null")  # no CAP_MKNOD (some containers): /dev/null is a character device too
            devices.append(dev)
        self.bin.mkdir(parents=True, exist_ok=True)
        for client in CLIENTS:
            real = binary(client)
            if real:
                wrapper = self.bin / client
                wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {real} "$@"\n')
                wrapper.chmod(0o755)
        prolog = self.etc / "task_prolog.sh"
        prolog.write_text(
            "#!/bin/sh\n"
            "# record what each task sees (output lines other than 'export'/'print' are ignored by SLURM)\n"
            f'echo "$SLURM_JOB_ID ${{SLURM_STEP_ID:-batch}} ${{CUDA_VISIBLE_DEVICES-unset}}" >> {self.task_env_log}\n'
        )
        prolog.chmod(0o755)
        munge_socket = self.run_dir / "munge.socket"
        gres = f"Gres=gpu:{self.gpus}" if self.gpus else ""
        self.conf.write_text(
            f"""# written by tests/slurm_cluster.py: a one-node test cluster, every file under {self.root}
ClusterName=csa-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={self.spool_dirs[0]}
SlurmdSpoolDir={self.spool_dirs[1]}
SlurmctldPidFile={self.run_dir}/slurmctld.pid
SlurmdPidFile={self.run_dir}/slurmd.pid
SlurmctldLogFile={self.log_dir}/slurmctld.log
SlurmdLogFile={self.log_dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS={self.root}
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog={prolog}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue/scontrol this long (Snakemake's squeue status command needs it)
MinJobAge={self.min_job_age}
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
SlurmdTimeout=300
NodeName={self.node} NodeAddr=127.0.0.1 {topology} RealMemory={self.memory_mb} {gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.etc / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"NodeName={self.node} Name=gpu File={dev}\n" for dev in devices)
        )
        if not self.munge_key.exists():  # a key of its own: 1024 random bytes, as mungekey writes
            self.munge_key.touch(mode=0o600)
            self.munge_key.write_bytes(os.urandom(1024))
        self.munge_key.chmod(0o600)

    # ------------------------------------------------------------------ daemons
    def _pid_file(self, daemon: str) -> Path:
        return self.run_dir / f"{daemon}.pid"

    def _wait_pid_file(self, daemon: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid_file = self._pid_file(daemon)
            if pid_file.exists() and pid_file.read_text().strip():
                return
            time.sleep(0.1)
        raise ClusterUnavailable(f"{daemon} wrote no pid file in {timeout:.0f} s; see {self.log_dir}/{daemon}.log")

    def _daemon(self, daemon: str, args: list[str]) -> None:
        with (self.log_dir / f"{daemon}.start.log").open("w") as log:
            result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=self.env, timeout=60)
        if result.returncode != 0:
            tail = (self.log_dir / f"{daemon}.start.log").read_text()[-1000:]
            raise ClusterUnavailable(f"{daemon} failed to start (rc {result.returncode}): {tail}")
        self._wait_pid_file(daemon)
        self.started.append(daemon)

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld and slurmd, and wait until the node is idle."""
        self._write_config()
        # munged forks into the background; --force: it runs as root here, with its files under root's temp dir
        self._daemon(
            "munged",
            [binary("munged"), "--force", f"--socket={self.run_dir}/munge.socket", f"--key-file={self.munge_key}",
             f"--pid-file={self._pid_file('munged')}", f"--log-file={self.log_dir}/munged.log",
             f"--seed-file={self.root}/munge/munged.seed"],
        )  # fmt: skip
        self._daemon("slurmctld", [binary("slurmctld"), "-f", str(self.conf), "-i"])
        self._daemon("slurmd", [binary("slurmd"), "-f", str(self.conf), "-N", self.node])
        self.wait_idle(timeout)
        return self

    def node_state(self) -> str:
        return self.command("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return
            if state.startswith(("drain", "down", "inval")):
                self.command("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
            time.sleep(0.5)
        raise ClusterUnavailable(
            f"node {self.node} not idle after {timeout:.0f} s (state {state!r}); see {self.log_dir}"
        )

    def stop(self, remove_state: bool = True) -> None:
        """Cancel leftover jobs, stop the daemons by the PIDs in their pid files, remove the spool dirs."""
        if self.conf.exists() and "slurmctld" in self.started:
            self.command("scancel", "--full", f"--partition={self.partition}", check=False)
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid_file = self._pid_file(daemon)
            if not pid_file.exists():
                continue
            try:
                pid = int(pid_file.read_text().strip())
            except ValueError:
                continue
            if _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 15
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)
        self.started.clear()
        if remove_state:  # state, spool, munge key and the fake GPU's device node; logs and config stay
            for d in (*self.spool_dirs, self.root / "dev"):
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ job information
    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still knows (MinJobAge keeps finished ones), as scontrol's key=value fields."""
        out = self.command("scontrol", "show", "job", "--oneliner", "--details", check=False)
        jobs = []
        for line in out.splitlines():
            if "JobId=" not in line:
                continue
            # values may contain spaces only in Command=/WorkDir=-like fields at the end; split on ' Key='
            fields = dict(re.findall(r"(?:^|\s)([A-Za-z:/_]+)=(.*?)(?=\s[A-Za-z:/_]+=|$)", line))
            jobs.append({key: value.strip() for key, value in fields.items()})
        return jobs

    def task_environments(self) -> list[tuple[str, str, str]]:
        """(job id, step id, CUDA_VISIBLE_DEVICES or 'unset') of every task launched so far."""
        if not self.task_env_log.exists():
            return []
        return [tuple(line.split(maxsplit=2)) for line in self.task_env_log.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    action, root = argv
    if action == "start":
        ensure_installed()
        cluster = SlurmCluster(Path(root))
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster = SlurmCluster(Path(root))
        cluster.started = ["slurmctld"]
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
