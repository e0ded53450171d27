"""Email: ``messages.py`` says what the emails say, ``smtp.py`` sends them.

Import from those modules; this package re-exports nothing.
"""
