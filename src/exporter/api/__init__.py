"""HTTP API: handlers by resource (``exports.py``, ``downloads.py``, ``tokens.py``,
``health.py``, ``pages.py``), the route table in one place (``routes.py``), schemas,
OpenAPI, the middlewares and the server seam (``http_server.py``)."""
