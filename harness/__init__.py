"""attention-harness: compare attention kinds and optimizers across tasks, tracked in MLflow."""

__version__ = "0.1.0"
