"""A warm process that has the heavy libraries imported and forks one child per pipeline command.

Every ``python -m pipeline <command>`` alone pays for importing torch, Lightning, MLflow, Optuna
and CodeCarbon and for CodeCarbon's hardware probe: about 6 s on a 2-core machine, 26 times in a
default ``dvc repro`` (docs/warm-server.md has the figures). So a command first looks for a server
that did that once and waits on a Unix socket, starting one (and waiting in its queue) where none
runs; it hands over its arguments, working directory, environment and stdin/stdout/stderr, and the
server forks a child that runs the command exactly as ``python -m pipeline`` would (the pipeline's
own code is imported afresh in each child, so edits take effect at once). The command's process
waits for the child's exit status and exits with it, forwarding SIGINT and SIGTERM to it; a child
whose command process died is sent SIGTERM, as is one whose server died. The server exits after
``PIPELINE_WARM_IDLE_S`` seconds (default 120) without a command.

A server serves only commands that would have run identically in it: one server per Python,
version of this module, installed libraries (the mtimes of ``sys.path``'s folders) and environment
(less the variables that change from one command to the next and that no library reads at import
time: ``STATE_ONLY``). Otherwise, or where the server cannot be reached, the command runs in its
own process as before. ``PIPELINE_WARM=0`` turns it off. Linux only: fork after these imports is
what PyTorch's DataLoader workers do there; the server checks that the imports started no Python
thread (the native pools of OpenBLAS and jemalloc they start handle fork themselves).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

from pipeline import worktime

SWITCH = "PIPELINE_WARM"  # 0: every command in its own process
IDLE_ENV = "PIPELINE_WARM_IDLE_S"
IDLE_S = 120.0
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (Linux's sun_path, less its final NUL)
_CHILD = "PIPELINE_WARM_CHILD"  # set in a forked child's environment until the command starts
# The libraries whose import is most of a command's start; an absent one is skipped.
# Then the parts the stages import later (the MLflow store, Optuna's importances, the report's).
PRELOAD = ("torch", "lightning.pytorch", "mlflow", "mlflow.tracking", "mlflow.store.tracking.sqlalchemy_store",
           "codecarbon", "optuna", "optuna.importance", "optuna.visualization.matplotlib",
           "optuna_integration.pytorch_lightning", "sklearn.metrics", "pandas", "scipy.stats", "matplotlib.pyplot",
           "matplotlib.backends.backend_agg", "omegaconf", "markdown_it", "adjustText", "opentelemetry.sdk.metrics",
           "filelock", "yaml")
# Variables read at run time only, which may differ between the commands one server runs.
# (A DDP rank's: Lightning sets CUBLAS_WORKSPACE_CONFIG for deterministic runs before starting them.)
STATE_ONLY = ("DVC_", "MLFLOW_", "PIPELINE_", "PYTEST_", "PL_", "TORCHELASTIC_", "RANK", "LOCAL_RANK", "NODE_RANK",
              "GLOBAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "CUBLAS_WORKSPACE_CONFIG", "PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES")


def enabled() -> bool:
    """Whether this command may run in a warm server (not where it already runs in one)."""
    return sys.platform == "linux" and os.environ.get(SWITCH, "1") != "0" and _CHILD not in os.environ


_served = False


def started_in_server() -> bool:
    """At a command's start: whether it runs in a child of the server (``served()`` says so from
    then on); the marker is taken out of the environment, so the commands it starts may use the
    server too."""
    global _served
    _served = os.environ.pop(_CHILD, None) is not None
    return _served


def served() -> bool:
    """Whether this command runs in a child forked from the warm server."""
    return _served


# -- where a server listens ------------------------------------------------------------------
def _state_only(name: str) -> bool:
    return name in STATE_ONLY or name.startswith(tuple(p for p in STATE_ONLY if p.endswith("_")))


def server_key() -> str:
    """What a command must share with a server to run in it. Not the folder of its ``pipeline``
    package: every child imports that afresh from its own command's path, so the copies of one
    project (DVC's experiment workspaces, a clone) share one server."""
    here = Path(__file__).resolve()
    folders = []
    for entry in sys.path[1:]:  # [0] is the command's own folder
        try:
            folders.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            folders.append((entry, None))
    env = sorted((k, v) for k, v in os.environ.items() if not _state_only(k))
    parts = [sys.executable, sys.version, hashlib.sha256(here.read_bytes()).hexdigest(), folders, env]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


def _folder(env) -> Path:
    """Where the sockets of the commands run with ``env`` are."""
    return Path(env.get("XDG_RUNTIME_DIR") or "/tmp") / f"pipeline-warm-{os.getuid()}"


def socket_dir() -> Path:
    base = _folder(os.environ)
    base.mkdir(mode=0o700, exist_ok=True)
    st = base.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{base} is not this user's private folder")
    return base


# -- messages ----------------------------------------------------------------------------------
def _send(sock: socket.socket, obj: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(obj).encode()
    msg = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [msg], fds)
    else:
        sock.sendall(msg)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _recv(sock: socket.socket) -> dict:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


# -- the command's side ------------------------------------------------------------------------
# Commands that import little of PRELOAD (prepare reads and splits the data: no Lightning, MLflow,
# CodeCarbon or Optuna). Where no server listens yet, such a command starts one for the commands
# after it and runs at once in its own process, beside the server's start, rather than waiting
# for the server's imports (the first command of a `dvc repro` is prepare).
BESIDE_START = frozenset({"prepare"})


def run_command(argv: list[str]) -> int | None:
    """Run ``python -m pipeline argv`` in this environment's warm server (started and waited for
    where none runs); its exit status. None where no server takes it: run it here."""
    if not argv or {"-h", "--help"} & set(argv):  # help needs none of the libraries
        return None
    sock = connect(wait=argv[0] not in BESIDE_START)
    return None if sock is None else _delegate(sock, argv)


def connect(start_timeout_s: float = 30.0, wait: bool = True) -> socket.socket | None:
    """A connection to the server of this process's key. Where none listens, start one (unless a
    server of this key refused to serve) and, with ``wait``, wait for it to listen: the command then
    waits in its queue while it imports, rather than importing the same beside it on the same
    cores. Without ``wait``, None once the server is started."""
    try:
        where = socket_dir()
        path = where / f"{server_key()}.sock"
    except OSError:
        return None
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:  # the kernel's limit: run alone
        return None
    started = None
    deadline = time.monotonic() + start_timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
        if started is None:
            if path.with_suffix(".refused").exists():  # said why in its log; commands run alone
                return None
            started = _start_server(where, path)
            if not wait:
                return None
        elif started.poll() is not None or time.monotonic() > deadline:  # it left without listening
            return None
        time.sleep(0.02)


def _start_server(where: Path, path: Path):
    import subprocess

    log = open(where / f"{path.stem}.log", "ab")  # noqa: SIM115 -- handed to the server
    env = {k: v for k, v in os.environ.items() if k != _CHILD}
    try:
        return subprocess.Popen([sys.executable, "-m", "pipeline.warm", str(path)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, env=env, close_fds=True)
    finally:
        log.close()


def _delegate(sock: socket.socket, argv: list[str]) -> int | None:
    import signal

    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:  # a closed standard stream: nothing to hand over
        sock.close()
        return None
    child: list[int] = []
    pending: list[int] = []

    def forward(signum, frame):
        if child:
            os.kill(child[0], signum)
        else:
            pending.append(signum)

    env = dict(os.environ)
    if os.environ.get(worktime.ENV):  # the command's wall time counts from this process's start
        env[worktime.STARTED_ENV] = str(worktime.process_started())
    try:
        _send(sock, {"argv": argv, "cwd": os.getcwd(), "path0": sys.path[0], "env": env}, [0, 1, 2])
    except OSError:
        sock.close()
        return None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        child.append(_recv(sock)["pid"])
    except (EOFError, OSError, KeyError, ValueError):  # the server ended before starting it
        sock.close()
        if pending:  # Ctrl-C while waiting: nothing was started, stop here
            os.write(2, b"interrupted\n")
            return 130
        return None
    try:
        for signum in pending:
            os.kill(child[0], signum)
        status = _recv(sock)["exit"]
    except (EOFError, OSError, KeyError, ValueError):
        os.write(2, b"pipeline: the warm server lost the command (PIPELINE_WARM=0 runs commands without it)\n")
        return 1
    finally:
        sock.close()
    if status < 0:  # killed by a signal: end the same way
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status
    return status


# -- starting and stopping servers from outside (benchmarks, tests) --------------------------------
def servers_of(env: dict) -> list[Path]:
    """The logs of the servers that commands run with ``env`` find (one per key)."""
    return sorted(_folder(env).glob("*.log"))


def _text(log: Path) -> str:
    try:
        return log.read_text()
    except FileNotFoundError:  # its server has left
        return ""


def start(env: dict, cwd: Path | None = None, timeout_s: float = 180) -> Path:
    """Start the server of the commands run with ``env`` in ``cwd`` and wait until it has its
    libraries imported; returns its log."""
    import subprocess

    subprocess.run([sys.executable, "-c", "import sys; from pipeline import warm; sys.exit(warm.connect() is None)"],
                   env=env, cwd=cwd, capture_output=True, check=True, timeout=60)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for log in servers_of(env):
            if " ready in " in _text(log):
                return log
        time.sleep(0.1)
    raise RuntimeError(f"no warm server ready after {timeout_s:.0f} s: {[_text(log) for log in servers_of(env)]}")


def stop(env: dict, timeout_s: float = 60) -> None:
    """SIGTERM the servers of ``env`` (each leaves once its commands have) and wait for them."""
    import re
    import signal

    for log in servers_of(env):
        found = re.search(r"pid (\d+) ready", _text(log))
        if not found or not _alive(pid := int(found[1])):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the server's side ---------------------------------------------------------------------------
def preload() -> None:
    import importlib
    import warnings

    os.environ.setdefault("MPLBACKEND", "Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 -- an optional library: the command imports it itself
                print(f"preload {name}: {type(err).__name__}: {err}", flush=True)


def prime() -> None:
    """Fill, once, what each command would otherwise fill itself: CodeCarbon's hardware probe (1.3
    to 2 s; its result is cached per process, and forked children inherit it). Runs beside the
    imports. Not where a GPU device exists: the probe would open NVML in the server, and NVML does
    not follow a fork."""
    import glob

    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"):
        return
    from pipeline.config import EnergyCfg
    from pipeline.energy import EnergyMeter

    EnergyMeter(EnergyCfg()).prime()


def check_forkable() -> None:
    """Raise where a forked child could not run a command as a process of its own would: a Python
    thread still running (it may hold a lock the child would wait on forever), or CUDA initialised
    (no forked child can use it)."""
    import threading

    if threading.active_count() > 1:
        raise RuntimeError(f"threads after the imports: {threading.enumerate()}")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("the imports initialised CUDA")


def serve(path: Path, idle_s: float) -> dict | None:
    """Serve commands until idle for ``idle_s``; returns None there. In a forked child, returns
    the request it is to run."""
    import fcntl
    import gc
    import selectors
    import signal

    lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 -- held for the server's life
    deadline = time.monotonic() + 10
    while True:  # a server of this key that is leaving holds it a moment longer
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() > deadline:
                return None  # another server serves this key
            time.sleep(0.05)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)  # commands queue here while the libraries load
    server_pid = os.getpid()
    stop: list[int] = []
    try:
        signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
        signal.signal(signal.SIGINT, lambda s, f: stop.append(s))
        t0 = time.perf_counter()
        import threading

        failed: list[BaseException] = []

        def primed():
            try:
                prime()
            except Exception as err:  # noqa: BLE001 -- raised below, in the server's own thread
                failed.append(err)

        primer = threading.Thread(target=primed, name="warm-prime")
        primer.start()
        preload()
        primer.join()
        try:
            if failed:
                raise failed[0]
            check_forkable()
        except Exception as err:  # noqa: BLE001 -- said in the log; commands then run in their own processes
            reason = f"not serving: {type(err).__name__}: {err}"
            print(reason, flush=True)
            path.with_suffix(".refused").write_text(reason + "\n")
            return None
        gc.collect()
        gc.freeze()  # the children share these objects' pages and never walk them again
        print(f"pid {server_pid} ready in {time.perf_counter() - t0:.1f} s", flush=True)
        wake_r, wake_w = os.pipe()  # SIGCHLD wakes the loop at once
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        children: dict[int, tuple[socket.socket, list[str], float]] = {}  # pid -> connection, argv, start
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        last = time.monotonic()
        while children or not (stop or time.monotonic() - last > idle_s):
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj == wake_r:
                    os.read(wake_r, 512)
                elif key.fileobj is listener:
                    conn, _ = listener.accept()
                    request = None if stop else _accept(conn)
                    if request is None:
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:  # the child: drop the server's state, run the command
                        signal.set_wakeup_fd(-1)
                        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                            signal.signal(sig, signal.SIG_DFL)
                        _end_with(server_pid)
                        sel.close()
                        for fd in (wake_r, wake_w):
                            os.close(fd)
                        for other in (listener, conn, *(c for c, _, _ in children.values())):
                            other.close()
                        lock.close()
                        return request
                    for fd in request["fds"]:
                        os.close(fd)
                    children[pid] = (conn, request["argv"], time.monotonic())
                    sel.register(conn, selectors.EVENT_READ, pid)
                    try:
                        _send(conn, {"pid": pid})
                    except OSError:
                        pass
                else:  # the command's process closed its end: it is gone, and so must the child be
                    sel.unregister(key.fileobj)
                    try:
                        os.kill(key.data, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for pid, status in _reaped():
                if pid not in children:
                    continue
                conn, argv, started = children.pop(pid)
                code = os.waitstatus_to_exitcode(status)
                print(f"pid {pid}: {' '.join(argv)}: exit {code} after {time.monotonic() - started:.1f} s", flush=True)
                try:
                    _send(conn, {"exit": code})
                except OSError:
                    pass
                if conn in sel.get_map():  # not where the command's process closed it first
                    sel.unregister(conn)
                conn.close()
                last = time.monotonic()
        path.with_suffix(".log").unlink(missing_ok=True)  # nothing to tell: it went well
        return None
    finally:
        if os.getpid() == server_pid:
            path.unlink(missing_ok=True)


def _end_with(server_pid: int) -> None:
    """In a forked child: be sent SIGTERM (and so stop as on Ctrl-C) if the server dies, which
    leaves the command's process without the child's exit status (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != server_pid:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _reaped() -> list[tuple[int, int]]:
    """(pid, wait status) of every child that has ended."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def _accept(conn: socket.socket) -> dict | None:
    fds: list[int] = []
    try:
        conn.settimeout(5)
        msg, fds, _, _ = socket.recv_fds(conn, 4, 3)
        if len(msg) < 4 or len(fds) != 3:
            raise EOFError
        (n,) = struct.unpack("!I", msg)
        request = json.loads(_recv_exact(conn, n))
        conn.settimeout(None)
    except (OSError, EOFError, ValueError):
        for fd in fds:
            os.close(fd)
        return None
    request["fds"] = fds
    return request


def become(request: dict) -> None:
    """In the forked child: take on the command's streams, folder, environment and arguments, then
    run ``python -m pipeline`` (its code imported afresh)."""
    import runpy

    for target, fd in enumerate(request["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        stream = open(fd, mode, buffering=1 if mode == "w" and os.isatty(fd) else -1, closefd=False,  # noqa: SIM115
                      encoding=getattr(sys, name).encoding, errors="backslashreplace" if fd == 2 else None)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[_CHILD] = "1"
    sys.path[0] = request["path0"]
    sys.argv = ["pipeline", *request["argv"]]
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]
    if "numpy" in sys.modules:  # a fresh process would seed numpy's global generator anew
        sys.modules["numpy"].random.seed()
    try:
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as end:
        code = _exit_code(end.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 -- as Python reports an uncaught exception
        traceback.print_exc()
        code = 1
    _end(code)


def _exit_code(code) -> int:
    """The exit status ``sys.exit(code)`` gives, printing a message as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _end(code: int) -> NoReturn:
    """End the child as Python's shutdown would, less the teardown of every module: that touches
    every object the server imported, and each page written to is copied from the server's (longer
    than a short command itself). So: wait for the command's non-daemon threads, run its ``atexit``
    handlers (MLflow, CodeCarbon and logging end there), flush, and leave as a forked
    ``multiprocessing`` worker does."""
    import threading

    from pipeline.private_api import run_exit_handlers

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 -- a closed pipe: nothing more to say
            pass
    os._exit(code)


if __name__ == "__main__":
    os.chdir("/")  # pin no folder of the user's (each child takes its command's)
    request = serve(Path(sys.argv[1]), float(os.environ.get(IDLE_ENV, IDLE_S)))
    if request is None:
        sys.exit(0)
    become(request)
