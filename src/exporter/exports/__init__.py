"""The export's own rules, as use cases: each takes ``Resources`` and returns a result.

The API, the operator CLI and (later) a scheduler call the same functions; none of them
knows HTTP. A refusal is an ``ExportRefused`` (``exporter.errors``) and each caller says it
in its own terms (a problem+json status, a CLI sentence).
"""
