"""What talks to MLflow: the store and its runs, and the run record that names what a run carries.

Only this package imports mlflow.
"""
