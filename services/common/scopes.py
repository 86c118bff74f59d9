"""What an API key may do. Shared by the gateway (which enforces scopes) and store (which keeps them)."""

from __future__ import annotations

PREDICT = "predict"
"""Synchronous predictions (ModelService.Predict, the Open Inference Protocol's ModelInfer)."""
JOBS = "jobs"
"""Creating, cancelling and retrying batch jobs (and following them)."""
READ = "read"
"""Reading models, predictions, jobs and statistics."""
ADMIN = "admin"
"""Managing API keys (KeyService); it grants every other scope too."""

ALL = (PREDICT, JOBS, READ, ADMIN)
"""Every scope, in the order they are shown."""
DEFAULT = (PREDICT, JOBS, READ)
"""What a key made before scopes existed may do: everything but admin."""
