"""The warm worker: on a local run on the CPU, one process imports torch and the job modules once,
and each job's script asks it to fork a child that runs the job, instead of importing them itself.

A demo job's training is short, and a process that imports torch pays a large share of it again in
imports and exit (README "Where the demo's time goes"). The child is forked from a worker that has
only imported (it never computes, so no thread pool or random state is shared), takes the job's
working directory, environment, stdout and stderr, runs the same ``runner.run_rule`` call, and its
exit status becomes the script's. A job writes the same bytes either way (tests/test_forkserver.py):
the worker starts with the run's kernel pin (``augdefense.kernels``), which a job that asks for
another is refused, and each child limits its thread pools to its job's ``threads``, which libraries
the worker loaded would otherwise ignore.

The script runs the job itself when there is no worker (dry runs, SLURM and other remote
executors, ``runtime.device`` other than ``cpu``, ``warm_worker: false``), when its interpreter is
not the worker's (a rule's conda environment), or when a package source changed since the worker
imported it. If the script is killed (Snakemake stopping a job), the worker kills the child and its
process group; if the worker is killed, the kernel kills its children (``PR_SET_PDEATHSIG``); the
worker ends with the Snakemake process that started it. Requests are read without blocking, each
at its own pace, so a client that connects and stalls holds up no other job.

What changes: Snakemake's ``benchmark:`` file of a forked job measures the script's process, so its
``s`` (wall time) is the job's, but its CPU and memory columns are the script's, not the job's (the
job's phases and peak memory are in its sidecar); the peak memory counts what the child shares with
the worker. (Python's ``multiprocessing`` forkserver serves the processes of one program; this one
serves independent scripts, so it is written here.)
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from augdefense import kernels
from augdefense.execution import JobSpec, function_named, run_job

# The variable through which jobs find the worker's socket (set by the Snakefile's onstart).
SOCKET_ENV = "AUGDEFENSE_WARM_WORKER"
# What the jobs import from other packages: torch (and torch._dynamo, which every optimizer's first
# step imports), and the libraries of the filters, tables and figures. The package's own modules are
# imported by each child, so a job's sidecar records the modules it ran and a source edited since
# the worker started is the one a job runs.
PRELOAD = (
    "numpy",
    "torch",
    "torch._dynamo",
    "torch.optim",
    "torch.utils.data",
    "sklearn.decomposition",
    "sklearn.cluster",
    "sklearn.neighbors",
    "pandas",
    "matplotlib.pyplot",
)
PACKAGE_DIR = Path(__file__).resolve().parent
_HEADER = struct.Struct("!I")
# A connection whose request has not fully arrived by then is dropped (it holds up nothing meanwhile).
HANDSHAKE_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def sources_fingerprint() -> dict[str, list[int]]:
    """(mtime, size) of every package source: a worker whose own code (this module, the package's
    ``__init__``) is stale is not used."""
    return {
        str(path.relative_to(PACKAGE_DIR)): [path.stat().st_mtime_ns, path.stat().st_size]
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def _send(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    conn.sendall(_HEADER.pack(len(data)) + data)


def _receive(conn: socket.socket) -> dict | None:
    """One message, or None if the other end closed first."""
    header = _read_exactly(conn, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(conn, _HEADER.unpack(header)[0])
    return None if data is None else json.loads(data)


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the job's side -------------------------------------------------------------------------------


def delegate(job: JobSpec, function) -> int | None:
    """Run ``job`` in a child of the warm worker; its exit status, or None
    when there is no usable worker (the caller then runs the job itself)."""
    from augdefense import timing

    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        return None  # not listening yet (still importing) or gone
    request = {
        "job": asdict(job),
        "function": f"{function.__module__}:{function.__qualname__}",
        "cpu_isa": kernels.setting_of(job.params),
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "startup": timing.process_age(),
        "sent": time.time(),
    }
    with conn:
        try:
            socket.send_fds(conn, [b"j"], [0, 1, 2])
            _send(conn, request)
            answer = _receive(conn)
        except OSError:
            return None  # the worker went away before taking the job
        if answer is None or not answer.get("accepted"):
            return None
        try:
            done = _receive(conn)
        except OSError:
            done = None
    if done is None:
        print("augdefense: the warm worker ended before the job did", file=sys.stderr)
        return 1
    return done["exit"]


# --- the worker's side ----------------------------------------------------------------------------


def _refusal(request: dict, fingerprint: dict, cpu_isa: str | None = None) -> str | None:
    if request["executable"] != sys.executable:
        return f"the job's interpreter {request['executable']} is not the worker's {sys.executable}"
    if not request["function"].startswith("augdefense."):
        return f"{request['function']} is not a job function of this package"
    if sources_fingerprint() != fingerprint:
        return "package sources changed since the worker imported them"
    if cpu_isa is not None and request.get("cpu_isa") != cpu_isa:
        return f"the job's runtime.cpu_isa {request.get('cpu_isa')} is not the worker's {cpu_isa}"
    return None


def _run_child(request: dict, fds: list[int], worker: int) -> int:
    """In the forked child: become the job's process and run it; the exit status."""
    _die_with(worker)
    os.setpgid(0, 0)
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["augdefense-job"]
    job = JobSpec(**request["job"])
    # The script's own start-up, and the hand-over.
    startup = (request["startup"] or 0.0) + max(0.0, time.time() - request["sent"])
    try:
        run_job(job, function_named(request["function"]), startup=startup, forked=True)
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _die_with(worker: int) -> None:
    """Have the kernel SIGKILL this process when the worker dies; if it died before we asked
    (this process was already handed to another parent), end now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != worker:
        os._exit(1)


class _Handshake:
    """A connection whose request is still arriving, read as it comes without blocking: the
    script's stdin, stdout and stderr (one byte carrying the descriptors), then one message."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.deadline = time.monotonic() + HANDSHAKE_SECONDS
        self.fds: list[int] | None = None
        self.buffer = b""

    def read(self) -> dict | None:
        """The request once complete, else None; EOFError if the script closed first, OSError or
        ValueError for a malformed one."""
        try:
            if self.fds is None:
                marker, self.fds, _, _ = socket.recv_fds(self.conn, 1, 3)
                if not marker:
                    raise EOFError
            chunk = self.conn.recv(1 << 16)
        except BlockingIOError:
            return None
        if not chunk:
            raise EOFError
        self.buffer += chunk
        if len(self.buffer) < _HEADER.size:
            return None
        size = _HEADER.unpack_from(self.buffer)[0]
        if len(self.buffer) < _HEADER.size + size:
            return None
        return json.loads(self.buffer[_HEADER.size : _HEADER.size + size])


class _Worker:
    def __init__(self, path: str, parent_fd: int, cpu_isa: str):
        self.fingerprint = sources_fingerprint()
        self.cpu_isa = cpu_isa
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.parent_fd = parent_fd
        self.selector.register(self.parent_fd, selectors.EVENT_READ, ("parent", None))
        self.children: dict[int, tuple[socket.socket, int]] = {}  # pid -> (connection, pidfd)
        self.handshakes: set[_Handshake] = set()

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select(timeout=self._next_deadline()):
                kind, item = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "handshake":
                    self._read(item)
                elif kind == "exited":
                    self._reap(item)
                elif kind == "client":
                    self._client_gone(item)
                elif kind == "parent":
                    return
            self._drop_stalled()

    def _next_deadline(self) -> float | None:
        if not self.handshakes:
            return None
        return max(0.0, min(h.deadline for h in self.handshakes) - time.monotonic())

    def _drop_stalled(self) -> None:
        now = time.monotonic()
        for handshake in [h for h in self.handshakes if h.deadline <= now]:
            self._end_handshake(handshake, f"no complete request within {HANDSHAKE_SECONDS:.0f} s")

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return  # the client gave up between the wake-up and the accept
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            return _refuse(conn, [], "not this user's job")
        conn.setblocking(False)
        handshake = _Handshake(conn)
        self.handshakes.add(handshake)
        self.selector.register(conn, selectors.EVENT_READ, ("handshake", handshake))

    def _end_handshake(self, handshake: _Handshake, refusal: str | None) -> None:
        self.handshakes.discard(handshake)
        self.selector.unregister(handshake.conn)
        handshake.conn.settimeout(10)  # small answers on a fresh socket: never more than a moment
        if refusal is not None:
            _refuse(handshake.conn, handshake.fds or [], refusal)

    def _read(self, handshake: _Handshake) -> None:
        if handshake not in self.handshakes:
            return  # dropped earlier in the same round of events
        try:
            request = handshake.read()
        except EOFError:
            return self._end_handshake(handshake, "the script closed its connection before its request was complete")
        except (OSError, ValueError) as exc:
            return self._end_handshake(handshake, f"a malformed request: {exc}")
        if request is None:
            return
        fds = handshake.fds
        if len(fds) != 3:
            return self._end_handshake(handshake, "an incomplete request")
        refusal = _refusal(request, self.fingerprint, self.cpu_isa)
        if refusal:
            return self._end_handshake(handshake, refusal)
        self._end_handshake(handshake, None)
        self._start(handshake.conn, fds, request)

    def _start(self, conn: socket.socket, fds: list[int], request: dict) -> None:
        worker = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory
            return _refuse(conn, fds, f"cannot fork: {exc}")
        if pid == 0:
            self._close_inherited(conn)
            os._exit(_run_child(request, fds, worker))
        for fd in fds:
            os.close(fd)
        _send(conn, {"accepted": True})
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (conn, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, ("exited", pid))
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))

    def _close_inherited(self, conn: socket.socket) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.selector.close()
        self.listener.close()
        os.close(self.parent_fd)
        conn.close()
        for other, pidfd in self.children.values():
            other.close()
            os.close(pidfd)
        for handshake in self.handshakes:
            handshake.conn.close()
            for fd in handshake.fds or []:
                os.close(fd)

    def _reap(self, pid: int) -> None:
        conn, pidfd = self.children.pop(pid)
        _, status = os.waitpid(pid, 0)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        if conn.fileno() != -1:
            self.selector.unregister(conn)
            try:
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            except OSError:
                pass  # the script is gone
            conn.close()

    def _client_gone(self, pid: int) -> None:
        """The script's end of a running job closed: it was killed, so the job is killed too."""
        if pid not in self.children:
            return  # reaped earlier in the same round of events
        conn, _ = self.children[pid]
        self.selector.unregister(conn)
        conn.close()
        _kill_group(pid)

    def close(self) -> None:
        for pid in list(self.children):
            _kill_group(pid)
        for handshake in list(self.handshakes):
            self._end_handshake(handshake, "the worker is ending")
        self.listener.close()


def _refuse(conn: socket.socket, fds: list[int], reason: str) -> None:
    """Tell the script to run its job itself, and let go of its connection and descriptors."""
    print(f"warm worker: a job runs in its own process: {reason}", file=sys.stderr, flush=True)
    try:
        _send(conn, {"accepted": False, "reason": reason})
    except OSError:
        pass  # the script is gone
    conn.close()
    for fd in fds:
        os.close(fd)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def serve(path: str, parent: int, cpu_isa: str = kernels.DEFAULT) -> None:
    """Pin the kernels to ``cpu_isa``, import what the jobs import, then fork a child per job until
    ``parent`` exits."""
    kernels.pin(cpu_isa)  # before the libraries load and read it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        parent_fd = os.pidfd_open(parent)
    except ProcessLookupError:  # the run ended before its worker started
        _remove(path)
        return
    worker = None
    try:
        started = time.perf_counter()
        import matplotlib

        matplotlib.use("Agg")  # as augdefense.figures does, before pyplot
        for module in PRELOAD:
            importlib.import_module(module)
        worker = _Worker(path, parent_fd, cpu_isa)
        print(
            f"warm worker {os.getpid()}: imported in {time.perf_counter() - started:.1f} s, "
            f"kernels {cpu_isa}, serving {path}",
            flush=True,
        )
        worker.serve()
    finally:
        if worker is not None:
            worker.close()
        _remove(path)


def _remove(path: str) -> None:
    """The socket, and its folder if nothing else is in it (``start`` made it for the socket)."""
    for remove, target in ((os.unlink, path), (os.rmdir, os.path.dirname(os.path.abspath(path)))):
        try:
            remove(target)
        except OSError:
            pass


def start(log: str | Path) -> str:
    """Start a worker for this process (the Snakemake run), its kernels pinned as this process's
    environment says (``kernels.SETTING_ENV``), and point its jobs at it (``SOCKET_ENV``); the
    socket's path. Jobs that start before it listens run in their own processes."""
    cpu_isa = kernels.setting_of({})
    directory = tempfile.mkdtemp(prefix="augdefense-")  # 0700: only this user can connect
    path = os.path.join(directory, "worker.sock")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        subprocess.Popen(
            [sys.executable, "-m", "augdefense.forkserver", path, "--parent", str(os.getpid()), "--cpu-isa", cpu_isa],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the jobs, not the worker: it ends with its parent
        )
    os.environ[SOCKET_ENV] = path
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m augdefense.forkserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("socket")
    parser.add_argument("--parent", type=int, required=True, help="serve until this process exits")
    parser.add_argument(
        "--cpu-isa",
        choices=kernels.SETTINGS,
        default=os.environ.get(kernels.SETTING_ENV, kernels.DEFAULT),
        help="the kernels' instruction set (runtime.cpu_isa)",
    )
    args = parser.parse_args(argv)
    serve(args.socket, args.parent, args.cpu_isa)
    return 0


if __name__ == "__main__":
    sys.exit(main())
