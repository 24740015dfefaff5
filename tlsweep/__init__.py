"""tlsweep: which layer of a frozen ImageNet CNN transfers best, as one MLflow-tracked Hydra sweep."""

import os

# TensorFlow's C++ INFO lines (oneDNN notices, CUDA probing) bury tlsweep's own log; warnings and
# errors still show. A user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
