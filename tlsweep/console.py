"""What a person sees in the terminal: TensorFlow's C++ start-up lines kept out, and progress that suits it.

TensorFlow writes its start-up notices (oneDNN, CUDA probing, `cuInit` failing on a machine without a GPU)
from C++ straight to file descriptor 2, before Python's logging exists, so no logging setting reaches them.
`quiet_native_startup` captures descriptor 2 while the backend starts and replays every line that is not
one of those notices: Python warnings and real errors still show. `TF_CPP_MIN_LOG_LEVEL=0` shows all.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

from tlsweep import environment
from tlsweep.redact import redact

# TensorFlow's and MLflow's own settings get tlsweep's defaults (`environment.LIBRARY_DEFAULTS`) where the user
# set none. Every command imports this module before Keras. TF_CPP_MIN_LOG_LEVEL=0, as the user set it, also
# shows the start-up lines that `quiet_native_startup` otherwise holds back.
SHOW_NATIVE_LOGS = environment.read().native_logs
environment.set_library_defaults()


def one_line_warnings() -> None:
    """Warnings as one short line each (`ConvergenceWarning: ...`), without the library's path and source line:
    a run keeps their full text (`fit_warnings.txt`). For the commands only, not for tlsweep used as a library."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"


_pending_interrupt = False


def keep_swallowed_interrupts() -> None:
    """Keep every Ctrl-C that reaches the command's process, also one that a library turns into something else,
    for the sweep to stop as interrupted.

    Python raises Ctrl-C's KeyboardInterrupt wherever the main thread is. In a garbage-collector callback (JAX
    registers one when Keras imports it) Python reports it as unraisable, a traceback on stderr, and drops it:
    the sweep would go on. Inside a library's C code it can come out as another error (TensorFlow's graph
    building raised `SystemError: ... bad argument to internal function`), and the job would end FAILED and the
    sweep go on. So the SIGINT handler records each Ctrl-C before raising it: `raise_pending_interrupt` raises
    it at the next step a job takes, and `as_interrupt` names the error a job or the sweep stopped with for what
    it was. Any other unraisable error is reported as before. A process started with Ctrl-C ignored keeps
    ignoring it. A launcher's worker processes (joblib, submitit, Ray) keep their own handling."""
    report = sys.unraisablehook

    def hook(unraisable) -> None:
        global _pending_interrupt
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            _pending_interrupt = True
            return
        report(unraisable)

    sys.unraisablehook = hook
    in_main_thread = threading.current_thread() is threading.main_thread()  # the only one that may set a handler
    if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _record_interrupt)


def _record_interrupt(signum: int, frame) -> None:
    global _pending_interrupt
    _pending_interrupt = True
    signal.default_int_handler(signum, frame)


def raise_pending_interrupt() -> None:
    """Raise the Ctrl-C that `keep_swallowed_interrupts` kept, if any."""
    if _pending_interrupt:
        raise KeyboardInterrupt


def as_interrupt(error: BaseException) -> BaseException:
    """The error that stopped a job or the sweep, or, where a Ctrl-C came before it, a KeyboardInterrupt caused by
    it: what the handler that caught the error raises instead."""
    if isinstance(error, KeyboardInterrupt) or not _pending_interrupt:
        return error
    interrupt = KeyboardInterrupt(f"came out of a library as {type(error).__name__}")
    interrupt.__cause__ = error
    return interrupt


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a command loads its libraries and starts its backend, then
    the whole heap frozen.

    Keras, TensorFlow and MLflow build millions of objects that live as long as the process, and each full
    collection would walk them all. Frozen (`gc.freeze`), they are skipped by every later collection; cycles
    that were garbage by then are never collected. For the commands only, not for tlsweep used as a library.
    `python -m benchmarks.startup` times the start-up."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def leave_heap_to_the_os() -> None:
    """As a command ends: freeze the heap, so the interpreter's final collections skip it.

    Exit handlers (`atexit`, `weakref.finalize`), logging's final flush and the flush of stdout and stderr still
    run. What a frozen object would only do in its finaliser at exit is not done: an object held by a module's
    globals is not finalised. What tlsweep writes is closed where it is written (runs end inside their block,
    cache entries are flushed and renamed, log handlers flush each record), never left to a finaliser.
    `python -m benchmarks.startup` times the exit."""
    gc.freeze()


# absl's banner, its I/W lines, and the E lines of CUDA probing (cuda_platform.cc, cuda_executor.cc, ...)
NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] .*"
    r"|E\d{4} [\d:.]+\s+\d+ cuda\w*\.cc:\d+\] .*)$"
)


@contextmanager
def quiet_native_startup(enabled: bool = True) -> Iterator[None]:
    """Hold back the C++ start-up notices written to descriptor 2 inside the block; replay the rest."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if not NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


_started = False
LINE_EVERY = 0.25  # a progress line each quarter of the work, where no terminal shows a bar


def start_backend_quietly() -> None:
    """Start the Keras backend once per process, its device probing inside `quiet_native_startup`."""
    global _started
    if _started:
        return
    with quiet_native_startup(enabled=not SHOW_NATIVE_LOGS):
        import keras

        keras.ops.convert_to_numpy(keras.ops.zeros((1,)))  # one tiny op: the backend probes its devices now
    _started = True


class SecretsFilter(logging.Filter):
    """Masks secrets (`tlsweep.redact`) in every line a handler writes, Hydra's own lines among them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def mask_secrets_in_logs() -> None:
    """Put `SecretsFilter` on every handler configured now (Hydra's console and file handlers), once each."""
    loggers = [logging.getLogger(), *(item for item in logging.Logger.manager.loggerDict.values()
                                      if isinstance(item, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(item, SecretsFilter) for item in handler.filters):
                handler.addFilter(SecretsFilter())


class Progress:
    """Images done out of a total: a tqdm bar on a terminal; elsewhere (CI, SLURM logs) a line every quarter."""

    def __init__(self, total: int, *, description: str, log):
        self.total, self.done, self.description, self.log = total, 0, description, log
        self.started = time.perf_counter()
        self.next_line = LINE_EVERY
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="img", unit_scale=True, leave=False)

    def update(self, n: int) -> None:
        raise_pending_interrupt()
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        if self.done / self.total >= self.next_line or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            rate = self.done / elapsed if elapsed > 0 else float("nan")
            left = (self.total - self.done) / rate if rate > 0 else float("nan")
            self.log.info("%s: %d/%d images, %.0f img/s, %.0f s left", self.description, self.done, self.total,
                          rate, left)
            self.next_line = self.done / self.total + LINE_EVERY

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
