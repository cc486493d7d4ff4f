"""The ledger's writer in a process of its own.

A Python process runs one thread at a time. With the writer in the API's process, the event loop
answering requests and the writer (which runs every command against the aggregates, encodes its
events and records them) took turns on one core while the other stood mostly idle: under bench
p2's load the loop held the interpreter 65% of the time and the writer 35%.

Here a child process runs a ledger of its own, and the API process's ledger forwards its write
commands to it (``Ledger.forward_writes``): each by its method's name and arguments over a pipe,
answered by the ``WriteResult`` or the error the child's ledger gave. The child's group committer
batches them as its writer thread would, so every guarantee of a write (one transaction per
batch, idempotency keys, no overselling) is the child ledger's own; in the child, one thread
reads the requests, runs the batches and sends the answers (``_Writes``). Reads stay in the API
process: they read the database, which a write's commit has reached before its answer is sent.

If the child stops, the commands it held are answered ``LedgerUnavailable`` (they may have been
recorded: a retry with the same idempotency key answers either way) and the next write starts a
new child. The child ignores SIGINT and SIGTERM, which a terminal or a service manager may send
to the whole process group: it stops when the API process asks it to, after answering the writes
in flight, or when the API process dies (the pipe closes with it).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from adapters.garbage import tune_garbage_collection
from domain.errors import LedgerUnavailable
from domain.service import FORWARDABLE, Ledger

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
# Writes other than an order's placement block a thread of the child until recorded; this many
# may wait at once (more queue for a thread).
BLOCKING_WRITE_THREADS = 32
STOPPED = (
    "the ledger's writer process stopped; the write may have been recorded: "
    "retry it with the same idempotency key"
)

# The directory holding this package, so the child imports the same code from wherever it runs.
_PROJECT_DIR = str(Path(__file__).resolve().parent.parent)
_running: weakref.WeakSet[WriterProcess] = weakref.WeakSet()

# How often a stopping child looks again for the blocking writes it still holds.
WAKE_CHECK_SECONDS = 0.05
# A reply: (request id, whether it succeeded, the WriteResult or the error).
Reply = tuple[int, bool, Any]


class _Child:
    """One started child: its process, its end of the pipe, and the writes it holds."""

    def __init__(self, process: subprocess.Popen[bytes], connection: Connection) -> None:
        self.process = process
        self.connection = connection
        self.pending: dict[int, Future[Any]] = {}
        self.receiver = threading.Thread()


class WriterProcess:
    """A ``WriteForwarder``: the writes of a ledger, run by a ledger in a child process."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._child: _Child | None = None
        self._closed = False
        self._stats: Mapping[str, int] = {}

    def start(self) -> WriterProcess:
        """Starts the child and waits until its ledger is open; raises what opening it raised."""
        with self._lock:
            self._child = self._start_child()
        return self

    @property
    def stats(self) -> Mapping[str, int]:
        return self._stats

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None else None

    def forward(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise LedgerUnavailable("the ledger is closed")
            child = self._child or self._restart()
            request_id = next(self._ids)
            request = _encode((request_id, method, args, kwargs))
            child.pending[request_id] = future
            try:
                child.connection.send_bytes(request)
            except (OSError, ValueError):
                child.pending.pop(request_id, None)
                raise LedgerUnavailable(STOPPED) from None
        return future

    def close(self) -> None:
        """Asks the child to stop (it answers what it holds first) and waits for it."""
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        _running.discard(self)
        if child is None:
            return
        with contextlib.suppress(OSError, ValueError):  # unless it is already gone
            child.connection.send_bytes(_encode(None))
        try:
            child.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.error("the writer process did not stop in time; killing it")
            child.process.kill()
            child.process.wait()
        child.receiver.join(STOP_TIMEOUT_SECONDS)
        child.connection.close()

    # --- the child's life --------------------------------------------------------------------
    def _restart(self) -> _Child:
        log.warning("starting a new writer process")
        try:
            self._child = self._start_child()
        except Exception as error:
            raise LedgerUnavailable(f"the ledger's writer process cannot start: {error}") from None
        return self._child

    def _start_child(self) -> _Child:
        # A fresh interpreter rather than a fork: the API process has threads (the event loop's,
        # the database pools'), and a fork copies their locks in whatever state they were.
        ours, theirs = socket.socketpair()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [_PROJECT_DIR, environment.get("PYTHONPATH")])
        )
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=environment,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        connection = Connection(ours.detach())
        try:
            connection.send(self._env)
            if not connection.poll(START_TIMEOUT_SECONDS):
                raise LedgerUnavailable("the ledger's writer process did not start in time")
            status, error = connection.recv()
        except (EOFError, OSError):
            connection.close()
            raise LedgerUnavailable(
                f"the ledger's writer process stopped while starting (exit code "
                f"{process.wait(STOP_TIMEOUT_SECONDS)})"
            ) from None
        except BaseException:
            process.kill()
            process.wait()
            connection.close()
            raise
        if status != "ready":
            process.wait(STOP_TIMEOUT_SECONDS)
            connection.close()
            raise error
        child = _Child(process, connection)
        child.receiver = threading.Thread(
            target=self._receive, args=(child,), name="ledger-writer-replies", daemon=True
        )
        child.receiver.start()
        _running.add(self)
        return child

    def _receive(self, child: _Child) -> None:
        try:
            while True:
                replies, self._stats = pickle.loads(child.connection.recv_bytes())
                for request_id, succeeded, value in replies:
                    future = child.pending.pop(request_id, None)
                    if future is None or future.cancelled():
                        continue
                    if succeeded:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("unreadable answer from the writer process; stopping it")
            child.process.kill()
        with self._lock:
            if self._child is child:
                self._child = None
            stopped, child.pending = child.pending, {}
            closing = self._closed
        try:
            exit_code: int | None = child.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            exit_code = None
        if not closing:
            log.error(
                "the writer process stopped (exit code %s) with %d writes in flight",
                exit_code,
                len(stopped),
            )
        for future in stopped.values():
            if not future.done():
                future.set_exception(LedgerUnavailable(STOPPED))


@atexit.register
def _close_running() -> None:
    # A child outlives an interpreter that exits without closing its ledger only until the
    # kernel closes the pipe; closing it here answers what it holds first.
    for writer in list(_running):
        writer.close()


# --- in the child ---------------------------------------------------------------------------
def serve_writes(connection: Connection) -> None:
    """The child's main: opens a ledger with the settings sent first, then runs the writes that
    come down the pipe until asked to stop or the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        env: dict[str, str] = connection.recv()
    except (EOFError, OSError):
        return
    try:
        ledger = Ledger(env=env)
    except Exception as error:
        connection.send(("failed", _sendable(error)))
        return
    tune_garbage_collection()  # the writer's cached aggregates are many and long-lived
    try:
        _Writes(ledger, connection).run()
    finally:
        ledger.close()


class _Writes:
    """The child's one busy thread: it reads the writes that came, runs them as one batch of
    the ledger's group committer, and sends their answers in one message.

    One thread rather than a reader, the committer's writer and a sender: handing every batch
    from thread to thread cost a wait for the interpreter's lock at each hand-off, longer than
    the work it let overlap. Writes other than an order's placement wait for their answer on a
    thread of ``blocking``; their commands wake this thread through a pipe of its own.
    """

    def __init__(self, ledger: Ledger, connection: Connection) -> None:
        self.ledger = ledger
        self.committer = ledger.committer
        self.connection = connection
        self.replies: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self.blocking = ThreadPoolExecutor(
            BLOCKING_WRITE_THREADS, thread_name_prefix="ledger-write"
        )
        # Blocking writes not yet answered; counted down by their threads.
        self.in_blocking = 0
        self.in_blocking_lock = threading.Lock()
        self.wake_reader, self.wake_writer = os.pipe()
        os.set_blocking(self.wake_reader, False)
        os.set_blocking(self.wake_writer, False)
        self.committer.drive(self._wake)
        self.stopping = False

    def run(self) -> None:
        self.connection.send(("ready", None))
        answered = 0  # commands the last batch answered: their callers may be about to return
        try:
            while not (self.stopping and self._idle()):
                self._take_requests(block=self.committer.waiting() == 0 and self.replies.empty())
                if answered and not self.stopping and self.committer.linger > 0:
                    self._linger_for(answered)
                answered = self.committer.run_waiting()
                self._send_replies()
        finally:
            # The wake-up pipe stays open: a write's thread may still wake this one, and the
            # process ends soon after.
            self.blocking.shutdown(wait=False)

    def _idle(self) -> bool:
        with self.in_blocking_lock:
            blocking = self.in_blocking
        return not blocking and self.committer.waiting() == 0 and self.replies.empty()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            os.write(self.wake_writer, b"\0")

    def _take_requests(self, *, block: bool) -> None:
        """Reads every request that has come (waiting for one, or a wake-up, when ``block``)."""
        sources: list[Any] = (
            [self.wake_reader] if self.stopping else [self.connection, self.wake_reader]
        )
        timeout = (WAKE_CHECK_SECONDS if self.stopping else None) if block else 0
        ready = wait(sources, timeout)
        if self.wake_reader in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_reader, 4096)
        while not self.stopping and self.connection.poll():
            self._take_request()

    def _linger_for(self, answered: int) -> None:
        """Waits up to the committer's linger for the callers the last batch answered, as its
        writer thread would: each batch costs a transaction."""
        deadline = time.monotonic() + self.committer.linger
        while not self.stopping and self.committer.waiting() < answered:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.connection.poll(remaining):
                return
            self._take_request()

    def _take_request(self) -> None:
        try:
            request = pickle.loads(self.connection.recv_bytes())
        except (EOFError, OSError):
            self.stopping = True  # the API process is gone
            return
        if request is None:
            self.stopping = True  # asked to stop: answer what is held, then go
            return
        request_id, method, args, kwargs = request
        answer = partial(_answer, self.replies, request_id)
        if method not in FORWARDABLE:
            self.replies.put((request_id, False, LedgerUnavailable(f"{method} is not a write")))
        elif method == "submit_order":
            # The busiest write: its command goes straight to the committer.
            try:
                self.ledger.submit_order(*args, **kwargs).add_done_callback(answer)
            except Exception as error:
                self.replies.put((request_id, False, _sendable(error)))
        else:
            with self.in_blocking_lock:
                self.in_blocking += 1
            future = self.blocking.submit(getattr(self.ledger, method), *args, **kwargs)
            future.add_done_callback(answer)
            future.add_done_callback(self._blocking_answered)

    def _blocking_answered(self, _: Future[Any]) -> None:
        with self.in_blocking_lock:
            self.in_blocking -= 1
        self._wake()  # to send its answer

    def _send_replies(self) -> None:
        batch: list[Reply] = []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self.replies.get_nowait())
        if not batch:
            return
        try:
            self.connection.send_bytes(_encode((batch, self.ledger.writer_stats)))
        except (OSError, ValueError):
            self.stopping = True  # the API process is gone: nobody is waiting for these


def _answer(replies: queue.SimpleQueue[Reply], request_id: int, future: Future[Any]) -> None:
    error = future.exception()
    if error is None:
        replies.put((request_id, True, future.result()))
    else:
        replies.put((request_id, False, _sendable(error)))


def _encode(message: object) -> bytes:
    # pickle's own function, not the connection's send(): that builds a pickler object of
    # multiprocessing's for every message, three times the cost for a write's arguments.
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def _sendable(error: BaseException) -> BaseException:
    """``error`` if it survives the pipe, else a plain error carrying its text (a defect's
    exception may hold what cannot be pickled)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


if __name__ == "__main__":
    serve_writes(Connection(int(sys.argv[1])))
