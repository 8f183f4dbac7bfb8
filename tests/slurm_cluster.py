"""A throw-away single-node SLURM cluster on this machine, for tests/test_slurm.py.

Everything the cluster writes (slurm.conf, gres.conf, state, spool, logs, pid files, the MUNGE key
and socket) lives in directories this module creates; the one exception is the symlink
/run/slurm/conf -> <root>/etc while the cluster runs (see ``RUN_CONF_LINK``), removed by ``stop``.
Nothing global is left behind except the Debian packages ``ensure_packages`` installs.

The node has fake GPUs: gres.conf points at character devices made with mknod (c 1 3, i.e. what
/dev/null is), so SLURM schedules and counts GPUs, sets CUDA_VISIBLE_DEVICES, and torch still sees
no CUDA device (jobs run on the CPU).

    cluster = SlurmCluster(root)
    cluster.start()            # raises ClusterUnavailable (with the reason) if it cannot
    subprocess.run(["sinfo"], env=cluster.env())
    cluster.stop()             # scancel, then stop every daemon and job process it started, by pid

``python tests/slurm_cluster.py start DIR`` / ``stop DIR`` does the same by hand (DIR must not exist
before ``start``; ``source DIR/env.sh`` points the SLURM commands at it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# snakemake-executor-plugin-slurm-jobstep drops every SLURM_* variable (SLURM_CONF included) before
# it runs `srun` inside a job, so srun there finds its configuration only where a SLURM client
# looks without SLURM_CONF: /etc/slurm/slurm.conf, then /run/slurm/conf/slurm.conf (the link a
# "configless" slurmd keeps). The cluster uses the second, and only where neither exists.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
RUN_CONF_LINK = Path("/run/slurm/conf")
# Marks every process that belongs to a cluster (daemons, job steps, the jobs, the clients the
# tests run), so that ``stop`` finds leftovers by their environment and ends them by pid.
MARKER = "AUGDEFENSE_SLURM_CLUSTER"


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster; the message says why (the tests skip with it)."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SBIN_PATH]))


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if _which(c) is None]


def ensure_packages(timeout: float = 600) -> None:
    """Install the Debian packages if a SLURM or MUNGE command is missing (root and apt-get only)."""
    if not missing_commands():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            f"{', '.join(missing_commands())} missing and not root: cannot install {' '.join(PACKAGES)}"
        )
    apt = _which("apt-get")
    if apt is None:
        raise ClusterUnavailable(f"{', '.join(missing_commands())} missing and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SBIN_PATH}
    # The packages' maintainer scripts would start MUNGE (and try SLURM) system-wide through
    # invoke-rc.d on a machine without systemd; a policy-rc.d that says 101 stops that.
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    deadline = time.monotonic() + timeout
    try:
        if own_policy:
            policy.write_text(
                "#!/bin/sh\n# written by augdefense tests/slurm_cluster.py during apt-get install\nexit 101\n"
            )
            policy.chmod(0o755)
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
            try:
                result = subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                raise ClusterUnavailable(f"{' '.join(cmd)} did not finish in {timeout:.0f} s") from None
            if result.returncode != 0:
                raise ClusterUnavailable(
                    f"{' '.join(cmd)} failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-1500:]}"
                )
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if missing_commands():
        raise ClusterUnavailable(f"still missing after apt-get install: {', '.join(missing_commands())}")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _end(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL if ``pid`` is still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ClusterUnavailable("cannot read MemTotal from /proc/meminfo")


class SlurmCluster:
    """One node (this machine, named ``hostname -s``) in each of ``partitions`` (the first is the
    default), with ``gpus`` fake GPUs."""

    def __init__(
        self,
        root: str | Path,
        partitions: tuple[str, ...] = ("debug",),
        gpus: int = 4,
        gpu_type: str = "fake",
        cpus: int | None = None,
        memory_mb: int | None = None,
        min_job_age: int = 3600,
    ):
        self.root = Path(root).resolve()
        self.partitions = tuple(partitions)
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.cpus = cpus or os.cpu_count() or 1
        # Without cgroups nothing enforces a job's memory, so the node may declare more than the
        # machine has (config_overrides keeps slurmd from draining it), e.g. to fit a profile's
        # per-job requests sized for a real GPU node.
        self.memory_mb = memory_mb or int(_memory_mb() * 0.9)
        self.min_job_age = min_job_age
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_dir: Path | None = None

    # -- environment for clients --------------------------------------------------------------
    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env[MARKER] = str(self.root)
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), SBIN_PATH])
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    # -- start ----------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        if os.geteuid() != 0:
            raise ClusterUnavailable("not root: the SLURM daemons need root (SlurmdUser=root)")
        if SYSTEM_CONF.exists():
            raise ClusterUnavailable(
                f"{SYSTEM_CONF} exists: this machine has its own SLURM configuration, "
                "which srun inside jobs would read instead of the test cluster's"
            )
        if RUN_CONF_LINK.exists() or RUN_CONF_LINK.is_symlink():
            raise ClusterUnavailable(f"{RUN_CONF_LINK} exists: another (configless) slurmd runs here")
        ensure_packages()
        try:
            pwd.getpwnam("munge")
        except KeyError:
            raise ClusterUnavailable("no 'munge' user (the munge package creates it)") from None
        self.root.mkdir(parents=True, exist_ok=False)
        try:
            self._write_config()
            self._start_munge()
            self._start_slurm(timeout)
        except BaseException:
            self.stop()
            raise

    def _write_config(self) -> None:
        etc, dev = self.root / "etc", self.root / "dev"
        for d in (etc, dev, self.root / "state", self.root / "spool", self.root / "log"):
            d.mkdir(parents=True)
        devices = []
        for i in range(self.gpus):
            path = dev / f"nvidia{i}"
            try:
                os.mknod(path, 0o666 | 0o020000, os.makedev(1, 3))  # S_IFCHR: what /dev/null is
            except OSError as e:
                raise ClusterUnavailable(f"cannot mknod the fake GPU device {path}: {e}") from None
            devices.append(str(path))
        # MUNGE checks that no one but its user can write the directories above its key and socket,
        # and runs as user munge, which cannot enter pytest's 0700 temporary directories.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="augslurm-munge-", dir="/tmp"))
        (self.root / "munge_dir").write_text(str(self.munge_dir))
        munge = pwd.getpwnam("munge")
        os.chown(self.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        ctld_port, slurmd_port = _free_ports(2)
        r = self.root
        overrides = "SlurmdParameters=config_overrides\n" if self.memory_mb > _memory_mb() else ""
        partition_lines = "".join(
            f"PartitionName={name} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE State=UP\n"
            for i, name in enumerate(self.partitions)
        )
        self.conf.write_text(f"""\
# Written by augdefense tests/slurm_cluster.py: a single-node test cluster, no cgroups, no accounting.
ClusterName=augtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_dir}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
MinJobAge={self.min_job_age}
{overrides}GresTypes=gpu
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{self.gpu_type}:{self.gpus} State=UNKNOWN
{partition_lines}""")
        (etc / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.node} Name=gpu Type={self.gpu_type} File={','.join(devices)}\n"
        )
        (self.root / "env.sh").write_text(f"export SLURM_CONF={self.conf}\nexport {MARKER}={self.root}\n")

    def _start_munge(self) -> None:
        d = self.munge_dir
        cmd = [
            _which("runuser") or "runuser",
            "-u",
            "munge",
            "--",
            _which("munged"),
            f"--key-file={d}/munge.key",
            f"--socket={d}/munge.socket",
            f"--pid-file={d}/munged.pid",
            f"--log-file={d}/munged.log",
            f"--seed-file={d}/munged.seed",
        ]
        result = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise ClusterUnavailable(
                f"munged did not start ({result.returncode}): {result.stderr.strip()}; "
                f"log: {self._tail(d / 'munged.log')}"
            )

    def _start_slurm(self, timeout: float) -> None:
        if not RUN_CONF_LINK.parent.exists():
            RUN_CONF_LINK.parent.mkdir(parents=True)
            (self.root / "created_run_dir").touch()
        RUN_CONF_LINK.symlink_to(self.conf.parent)
        for name, cmd in (
            ("slurmctld", [_which("slurmctld"), "-f", str(self.conf), "-c"]),
            ("slurmd", [_which("slurmd"), "-f", str(self.conf), "-N", self.node]),
        ):
            result = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise ClusterUnavailable(
                    f"{name} did not start ({result.returncode}): {result.stderr.strip()}; "
                    f"log: {self._tail(self.root / 'log' / f'{name}.log')}"
                )
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.run("sinfo", "--noheader", "--Node", "--format=%T", check=False)
            state = (result.stdout + result.stderr).strip()
            # One line per partition the node is in.
            if result.returncode == 0 and state and set(state.split()) <= {"idle", "mixed", "allocated"}:
                return
            time.sleep(0.5)
        raise ClusterUnavailable(
            f"node {self.node} not idle after {timeout:.0f} s (sinfo: {state!r}); "
            f"slurmctld log: {self._tail(self.root / 'log' / 'slurmctld.log')}; "
            f"slurmd log: {self._tail(self.root / 'log' / 'slurmd.log')}"
        )

    @staticmethod
    def _tail(path: Path, chars: int = 1500) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(none)"

    # -- stop -----------------------------------------------------------------------------------
    def cancel_all(self, timeout: float = 30) -> None:
        """scancel every job and wait until none is pending or running."""
        if not self.conf.exists() or _read_pid(self.root / "slurmctld.pid") is None:
            return
        for partition in self.partitions:
            self.run("scancel", "--full", "--partition", partition, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.run(
                "squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING", check=False, timeout=10
            )
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel the jobs, stop slurmd, slurmctld and munged by their pid files, end any process
        left with this cluster's marker in its environment, and remove the /run/slurm/conf link."""
        try:
            self.cancel_all()
        except (OSError, subprocess.SubprocessError, RuntimeError):
            pass
        munge_dir = self.munge_dir
        if munge_dir is None and (self.root / "munge_dir").exists():
            munge_dir = Path((self.root / "munge_dir").read_text().strip())
        daemons = [(self.root / "slurmd.pid", str(self.conf)), (self.root / "slurmctld.pid", str(self.conf))]
        if munge_dir is not None:
            daemons.append((munge_dir / "munged.pid", str(munge_dir)))
        for pid_file, needle in daemons:
            pid = _read_pid(pid_file)
            # A pid file can outlive its daemon: end the pid only if its command line names this cluster.
            if pid is not None and needle in _cmdline(pid):
                _end(pid, grace=10)
        for pid in self.leftover_pids():
            _end(pid, grace=5)
        if RUN_CONF_LINK.is_symlink() and Path(os.readlink(RUN_CONF_LINK)) == self.conf.parent:
            RUN_CONF_LINK.unlink()
            if (self.root / "created_run_dir").exists():
                try:
                    RUN_CONF_LINK.parent.rmdir()  # only if empty
                except OSError:
                    pass
        if munge_dir is not None and munge_dir.exists():
            shutil.rmtree(munge_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes (other than this one) whose environment names this cluster."""
        marker = f"{MARKER}={self.root}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0") and _alive(int(entry.name)):
                pids.append(int(entry.name))
        return pids


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print(__doc__.split("\n\n")[-1].strip(), file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "start":
        try:
            cluster.start()
        except ClusterUnavailable as e:
            print(f"cannot start the cluster: {e}", file=sys.stderr)
            return 1
        print(cluster.run("sinfo").stdout, end="")
        print(f"source {cluster.root / 'env.sh'}  # then sbatch, squeue, snakemake --profile profiles/slurm ...")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
