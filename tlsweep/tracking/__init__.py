"""What talks to MLflow: the store and its runs, the run record that names what a run carries, and the
payloads and models written into runs.

Only `store` and `models` (with `pyfunc_model`, the code of a logged pipeline) import mlflow; the others go
through them.
"""
