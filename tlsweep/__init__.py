"""tlsweep: which layer of a frozen ImageNet CNN transfers best, as one MLflow-tracked Hydra sweep."""

__version__ = "0.1.0"
