"""The engine process of split serving: every model's backend and batcher, behind a ZeroMQ socket.

HTTP frontends (server/frontend.py) parse, validate, decode and tokenise; they send each request's
items here (server/wire.py) and wait. The engine is the same `ServerState` the in-process server uses
(loading, warm-up, readiness, dynamic and continuous batchers, queue bounds, drain), so every batching
contract holds unchanged; this module only adds the socket loop:

- a ROUTER socket: each frontend's DEALER identity comes with its messages, so a reply goes back to
  the frontend that owns the request;
- one asyncio task per request awaiting `batcher.submit` (the batcher's worker threads run the models;
  this loop never does model work), cancelled when the frontend says its client left;
- a `Ping` gets the load status and the models' descriptions (readiness and /v1/models in the
  frontends come from here).

Models are kept by name (`ServerState.slots`); a `Control` message loads or unloads one at runtime
and is answered with the new status, so the asking frontend routes by it at once.
SIGTERM: refuse new work, drain what is queued (`ServerState.stop`), exit 0. SIGINT is ignored: a
Ctrl-C reaches the whole process group, and the supervisor decides when the engine stops (after the
frontends drained their requests, which need the engine).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any, Optional

import zmq
import zmq.asyncio

from . import wire
from .errors import ApiError
from .settings import ServerSettings
from .state import ServerState

__all__ = ["run_engine", "EngineServer", "LOAD_FAILED_EXIT"]

log = logging.getLogger("mmserve.server.engine")

LOAD_FAILED_EXIT = 3  # exit status: a model failed to load (the supervisor stops instead of restarting)


class EngineServer:
    def __init__(self, settings: ServerSettings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.state = ServerState(settings)
        self._tasks: dict[tuple[bytes, int], asyncio.Task] = {}
        self._stop = asyncio.Event()
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loader = asyncio.create_task(self._load(), name="load-models")
        receiver = asyncio.create_task(self._receive(), name="engine-receive")
        watchdog = asyncio.create_task(self._orphan_watchdog(), name="engine-watchdog")
        await self._stop.wait()
        log.info("engine: stopping (draining queued work)")
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        await self.state.stop()  # refuse new items, finish the queued ones (their replies still go out)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=self.settings.shutdown_grace_s)
        receiver.cancel()
        watchdog.cancel()
        await asyncio.gather(receiver, watchdog, return_exceptions=True)
        self._sock.close(0)
        self._ctx.term()

    async def _load(self) -> None:
        await self.state.start()
        if self.state.status == "failed" and self.settings.exit_on_load_error:
            self._stop.set()

    async def _orphan_watchdog(self) -> None:
        """Exit with the supervisor: an engine whose parent was killed must not outlive it."""
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        log.warning("engine: the supervisor is gone; stopping")
        self._stop.set()

    # ------------------------------------------------------------------ messages

    async def _receive(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            identity, header, payload = frames[0].bytes, frames[1].buffer, frames[2:]
            try:
                message = wire.TO_ENGINE.decode(header)
            except Exception:  # only our frontends talk here; a bad message is a bug worth a log line
                log.exception("engine: undecodable message from a frontend")
                continue
            if isinstance(message, wire.Submit):
                task = asyncio.create_task(self._run(identity, message, [f.buffer for f in payload]))
                self._tasks[(identity, message.id)] = task
                task.add_done_callback(lambda _, key=(identity, message.id): self._tasks.pop(key, None))
            elif isinstance(message, wire.Control):
                task = asyncio.create_task(self._control(identity, message))
                self._tasks[(identity, message.id)] = task
                task.add_done_callback(lambda _, key=(identity, message.id): self._tasks.pop(key, None))
            elif isinstance(message, wire.Cancel):
                task = self._tasks.get((identity, message.id))
                if task is not None:
                    task.cancel()
            else:
                await self._send(identity, self._status())

    def _status(self) -> wire.Status:
        state = self.state
        models = [wire.ModelEntry(slot.name, slot.task or "", str(slot.spec.path), state.describe_slot(slot),
                                  slot.state, slot.reason) for slot in state.slots.values()]
        return wire.Status(state.status, state.error, models)

    async def _control(self, identity: bytes, control: wire.Control) -> None:
        try:
            if control.action == "load":
                await self.state.load(control.name)
            elif control.action == "unload":
                await self.state.unload(control.name)
            else:
                raise ApiError(422, "invalid_request", f"unknown model action {control.action!r}")
        except ApiError as exc:
            await self._send(identity, wire.Reply(control.id, wire.ErrorInfo(exc.status, exc.code, exc.detail,
                                                                             dict(exc.headers))))
            return
        await self._send(identity, wire.Reply(control.id), wire.ENCODER.encode(self._status()))

    async def _run(self, identity: bytes, submit: wire.Submit, frames: list[Any]) -> None:
        try:
            served = self.state.resolve(None, submit.model)
            payloads = wire.unpack_payloads(submit, frames)
            results = await served.batcher.submit(payloads, key=submit.key, request_id=submit.request_id)
        except asyncio.CancelledError:
            return  # the client left: its frontend no longer waits for an answer
        except ApiError as exc:
            await self._send(identity, wire.Reply(submit.id, wire.ErrorInfo(exc.status, exc.code, exc.detail,
                                                                            dict(exc.headers))))
            return
        except Exception:
            log.exception("engine: request %s failed", submit.request_id)
            await self._send(identity, wire.Reply(submit.id, wire.ErrorInfo(
                500, "internal_error", "internal server error; it was logged under this request id")))
            return
        await self._send(identity, wire.Reply(submit.id), wire.ENCODER.encode(results))

    async def _send(self, identity: bytes, message: Any, *extra: bytes) -> None:
        await self._sock.send_multipart([identity, wire.ENCODER.encode(message), *extra], copy=False)


def run_engine(settings: ServerSettings, endpoint: str, error_file: Optional[str] = None) -> None:
    """Entry point of the engine process (spawned by server/supervisor.py)."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s [engine %(process)d]: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    async def main() -> Optional[str]:
        engine = EngineServer(settings, endpoint)
        await engine.serve()
        return engine.state.error if engine.state.status == "failed" else None

    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover - Windows
        run = asyncio.run
    error = run(main())
    if error is not None and settings.exit_on_load_error:
        if error_file:
            Path(error_file).write_text(error)
        os._exit(LOAD_FAILED_EXIT)
