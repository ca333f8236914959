"""Run TPM commands on a thread of their own, each under a deadline.

A TPM that stops answering (a stopped swtpm, a wedged chip or driver) blocks the calling
thread inside the TSS for ever: the TCTI reads with no timeout and nothing can interrupt
it. So every command for one TPM context runs on that context's own ``TpmThread``, and the
caller waits at most a deadline for the answer. A command that overruns raises
``TpmError`` (the lifecycle's "TPM lost" path) and leaves the thread *wedged*: it stays
blocked in the TSS until the TPM answers or the connection breaks, and refuses further
commands at once. A wedged thread is retired, never reused; whatever cleanup it was given
(closing the context) runs after the stuck command returns.

The threads are daemons: a process shutting down never waits for a TPM that is gone.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from attestation.errors import TpmError

T = TypeVar("T")

_STOP = object()


class TpmThread:
    """One thread that owns one TPM context. ``call`` is safe from any thread."""

    def __init__(self, name: str = "tpm") -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.wedged = False  # a command overran its deadline; nothing more is taken

    @property
    def alive(self) -> bool:
        """False once the thread has finished (retired and its queue drained)."""
        return self._thread.is_alive()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float) -> T:
        """``fn(*args)`` on the TPM thread; its result, or what it raised.

        Raises TpmError when the thread is wedged or ``fn`` has not returned within
        ``timeout`` seconds (the thread is wedged from then on).
        """
        if self.wedged:
            raise TpmError("the TPM has not answered an earlier command")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.wedged = True
            raise TpmError(f"no answer from the TPM within {timeout:g} s") from None

    def retire(self, cleanup: Callable[[], object] | None = None) -> None:
        """Run ``cleanup`` after any command still running, then end the thread."""
        self.wedged = True
        if cleanup is not None:
            self._jobs.put((None, cleanup, ()))
        self._jobs.put(_STOP)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args = job
            if future is not None and not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, who decides
                if future is not None:
                    future.set_exception(exc)
                continue
            if future is not None:
                future.set_result(result)
