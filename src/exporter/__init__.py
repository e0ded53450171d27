"""exporter: a user's memberships as a CSV file, produced asynchronously and emailed."""

__version__ = "0.1.0"
