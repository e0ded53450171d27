"""The ``exporter`` command: ``main.py`` (service, setup and development commands),
``ops.py`` (operator commands: jobs and the queue), ``common.py`` (what they share)."""
