"""Prefect flows, one per pipeline stage (`python -m flows.<stage>`), called by dvc.yaml.

Importing this package sets the offline environment before Prefect or any model library is imported, and routes
the core package's log records (training progress) into Prefect's logs.
"""

import os

from polydistill.config import set_offline_environment

set_offline_environment()
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "polydistill")
