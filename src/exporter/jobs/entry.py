"""For the plain arq CLI: ``arq exporter.jobs.entry.WorkerSettings``.

The only module that reads configuration at import time; nothing else imports it.
"""

from exporter.config import load_settings
from exporter.jobs.worker import build_worker_settings

WorkerSettings = build_worker_settings(load_settings())
