"""`python -m tlsweep`: the only @hydra.main. It hands the composed config to `job.run` and returns the
sweep's target (validation accuracy); inside a multirun the sweep's callback has already checked every job
and opened the parent run (`tlsweep.sweep.callback`).

A config error is one line and exit status 1; inside a multirun a failed job is logged FAILED and the sweep
goes on, to exit non-zero at its end. Ctrl-C is one line and exit status 130: the running job's run and the
sweep's parent end KILLED, and `resume=true` picks up where it stopped.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from tlsweep import console
from tlsweep.config import CONF_DIR, register_configs
from tlsweep.errors import TlsweepError
from tlsweep.sweep import context
from tlsweep.tracking import prepared

log = logging.getLogger("tlsweep")

register_configs()

INTERRUPTED = 130  # the shell's status for a command stopped by Ctrl-C (128 + SIGINT)
HELP = {"--help", "-h", "--hydra-help"}
INFO = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")  # the package's, wherever it runs from
def main(cfg: DictConfig) -> float:
    from tlsweep.job import run  # imported by `cli` already, after the store's schema was started

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    console.mask_secrets_in_logs()
    sweep = context.received()
    try:
        return run(cfg, sweep=sweep)
    except TlsweepError as err:
        console.raise_pending_interrupt()
        log.error("%s", err)
        if not multirun:
            sys.exit(1)
        return math.nan  # the run is marked FAILED; the sweep goes on and exits non-zero at its end
    except Exception:
        console.raise_pending_interrupt()  # a Ctrl-C that a library turned into another error
        if multirun:
            log.exception("job failed")
            return math.nan
        raise


def interrupted() -> None:
    """Ctrl-C: one line, exit status 130. Runs in flight were marked KILLED on the way out."""
    log.error("interrupted: the running job and the sweep's parent run are marked KILLED; run the same command "
              "with resume=true to go on where it stopped")
    sys.exit(INTERRUPTED)


def cli() -> None:
    """The `tlsweep` command (and `python -m tlsweep`)."""
    console.one_line_warnings()
    console.keep_swallowed_interrupts()
    try:
        if not HELP & set(sys.argv):  # help needs no backend
            if not INFO & set(sys.argv):  # nor a store: Hydra prints what it composed and stops
                prepared.begin(sys.argv[1:], Path.cwd())
            with console.collector_paused():  # the libraries' heap, once loaded, is never walked again
                importlib.import_module("tlsweep.job")  # before Keras: skops looks types up in sys.modules' order
                console.start_backend_quietly()
        main()
    except KeyboardInterrupt:
        interrupted()
    except Exception as err:  # raised before Hydra took over, after a Ctrl-C
        if not isinstance(console.as_interrupt(err), KeyboardInterrupt):
            raise
        interrupted()
    finally:
        prepared.discard()
        console.leave_heap_to_the_os()


if __name__ == "__main__":
    cli()
