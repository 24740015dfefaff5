"""tlsweep: which layer of a frozen ImageNet CNN transfers best, as one MLflow-tracked Hydra sweep."""

import os

# TensorFlow's C++ INFO lines (oneDNN notices, CUDA probing) bury tlsweep's own log; warnings and
# errors still show. A user's own setting wins, and TF_CPP_MIN_LOG_LEVEL=0 also shows the start-up lines
# that tlsweep.console otherwise holds back.
SHOW_NATIVE_LOGS = os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# MLflow draws a progress bar for every artifact copy, several per logged model; a user's setting wins
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

__version__ = "0.1.0"
