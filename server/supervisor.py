"""Split serving: N HTTP frontend processes and one engine process, kept alive by this one.

    clients ──► listening socket (bound once, here) ──► frontend 1..N   (uvicorn workers: HTTP,
                                                         │  ▲            validation, decode,
                                          items (ZeroMQ) ▼  │ results    preprocess, tokenise)
                                                        engine          (every model's batcher and
                                                                         backend, one per device)

Why processes: HTTP parsing, multipart, image decoding and tokenising are Python and hold the GIL;
in one process they starve the batcher, so batches stay tiny (vLLM moved its engine out of the API
process for the same reason; `--api-server-count` is our `--frontends`).

- Frontends are uvicorn's own worker supervisor (`uvicorn.supervisors.Multiprocess`): the socket is
  bound once and shared, a worker that dies or stops answering its health check is replaced, SIGTERM
  makes every worker drain its in-flight requests. Their metrics files are retired when they die.
- The engine is watched by a thread here: when it dies it is started again (requests it held have
  already failed with 503 in the frontends, which reconnect by themselves). A model that fails to load
  stops the whole server with exit status 2, as the in-process server does (`exit_on_load_error`).
- Shutdown order: frontends first (their in-flight requests still need the engine), then the engine
  drains and exits.
- Metrics: every process writes prometheus-client multiprocess files in a private directory created
  here (`PROMETHEUS_MULTIPROC_DIR`, set before any child starts); any frontend's /metrics sums them.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import uvicorn
from prometheus_client import multiprocess as prometheus_multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess

from .settings import ServerSettings, available_cpus

__all__ = ["run_split", "default_frontends", "EngineKeeper"]

log = logging.getLogger("mmserve.server.supervisor")

_HEALTHCHECK_TIMEOUT_S = 60
_SPAWN = multiprocessing.get_context("spawn")  # never fork a process that may hold threads


def default_frontends(cpus: Optional[int] = None) -> int:
    """One frontend per two cores, at least one, at most 8: the engine needs cores for the model and
    its batcher threads, and each frontend process costs its own memory (~150 MB with torch imported)."""
    if cpus is None:
        cpus = available_cpus()
    return max(1, min(8, cpus // 2))


class EngineKeeper:
    """Starts the engine process and starts it again whenever it dies, until `stop()`."""

    def __init__(self, settings: ServerSettings, endpoint: str, run_dir: Path) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.error_file = run_dir / "engine-error.txt"
        self.load_error: Optional[str] = None
        self.restarts = 0
        self.on_fatal: Callable[[], None] = lambda: None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="engine-keeper", daemon=True)
        self.process: Optional[multiprocessing.process.BaseProcess] = None
        self._started_at = 0.0

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        from .engine import run_engine

        self.process = _SPAWN.Process(target=run_engine, name="mmserve-engine",
                                      args=(self.settings, self.endpoint, str(self.error_file)))
        self._started_at = time.monotonic()
        self.process.start()
        log.info("engine process %d started", self.process.pid)

    def _watch(self) -> None:
        from .engine import LOAD_FAILED_EXIT

        while not self._stopping.wait(0.1):
            process = self.process
            if process is None or process.is_alive():
                continue
            process.join()
            prometheus_multiprocess.mark_process_dead(process.pid)
            if self._stopping.is_set():
                return
            if process.exitcode == LOAD_FAILED_EXIT:
                self.load_error = self.error_file.read_text() if self.error_file.is_file() else "see the log"
                self.on_fatal()
                return
            log.error("engine process %d died (exit status %s); starting a new one", process.pid, process.exitcode)
            self.restarts += 1
            if time.monotonic() - self._started_at < 5:  # dying at start-up: do not spin
                self._stopping.wait(1.0)
                if self._stopping.is_set():
                    return
            self._spawn()

    def stop(self) -> None:
        """SIGTERM the engine (it drains what is queued) and wait for it."""
        self._stopping.set()
        self._thread.join(5)
        process = self.process
        if process is None or process.exitcode is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        process.join(self.settings.shutdown_grace_s + 10)
        if process.is_alive():  # pragma: no cover - a wedged engine
            log.error("engine process %d did not stop; killing it", process.pid)
            process.kill()
            process.join()


def run_split(settings: ServerSettings, frontends: int) -> Optional[str]:
    """Serve with `frontends` HTTP processes and one engine process until SIGINT/SIGTERM. Returns the
    load error when a model failed to load (the caller exits with status 2), else None."""
    run_dir = Path(tempfile.mkdtemp(prefix="mmserve-"))  # 0700: the engine socket and metrics files
    metrics_dir = run_dir / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # inherited by every child from here on
    endpoint = f"ipc://{run_dir}/engine.sock"

    from .frontend import create_frontend_app

    config = uvicorn.Config(
        functools.partial(create_frontend_app, settings, endpoint),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=frontends,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        server_header=False,
        # uvicorn pings each worker and replaces one that does not answer in time; a new frontend
        # answers only once its imports (torch, ~5-10 s on a busy 2-core machine) are done.
        timeout_worker_healthcheck=_HEALTHCHECK_TIMEOUT_S,
    )
    engine = EngineKeeper(settings, endpoint, run_dir)
    try:
        sock = config.bind_socket()
        engine.start()
        frontend_supervisor = _Frontends(config, sockets=[sock])
        engine.on_fatal = frontend_supervisor.should_exit.set
        frontend_supervisor.run()  # until a signal (or a failed load): frontends drain and exit
        sock.close()
    finally:
        engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    log.info("stopped (engine restarts: %d)", engine.restarts)
    return engine.load_error


class _Frontends(Multiprocess):
    """uvicorn's worker supervisor, plus: a dead frontend's live gauges leave the metrics."""

    def keep_subprocess_alive(self) -> None:
        before = {p.pid for p in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {p.pid for p in self.processes}:
            log.warning("frontend process %s died; replaced", pid)
            prometheus_multiprocess.mark_process_dead(pid)
