"""For the plain arq CLI: ``arq exporter.jobs.entry.WorkerSettings``.

The only module that reads configuration at import time; nothing else imports it.
"""

from exporter.config import load_settings
from exporter.jobs.worker import build_worker_settings

_SETTINGS = load_settings()
WorkerSettings = build_worker_settings(_SETTINGS)
# The large exports' pool, as `exporter worker --queue large`.
LargeWorkerSettings = build_worker_settings(_SETTINGS, large=True)
