"""Which channel delivers a job. Email is the only one so far; a new channel adds its
module under ``delivery/`` and its choice here (from the job or the settings)."""

from __future__ import annotations

from exporter.delivery.base import Channel
from exporter.delivery.email import EmailChannel
from exporter.models import ExportJob
from exporter.resources import Resources


def channel_for(resources: Resources, job: ExportJob) -> Channel:
    """The channel that delivers ``job``."""
    del job  # every export is emailed today
    return EmailChannel(resources)
