"""tlsweep: which layer of a frozen backbone transfers best, as one MLflow-tracked Hydra sweep.

The commands: `tlsweep` (python -m tlsweep), `tlsweep-layers` (python -m tlsweep.layers) and `tlsweep-compare`
(python -m tlsweep.compare). From a notebook: `from tlsweep.scores import logme, knn_accuracy`.
"""

import time as _time

__version__ = "0.1.0"
IMPORTED = _time.monotonic()  # where /proc cannot say when the process started (provenance.process_age)
