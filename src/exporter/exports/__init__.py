"""The export's own rules. Use cases: take Resources, return results; the API, the CLI and a
scheduler call them. ``lifecycle.py`` names every move of a job record with its fields."""
