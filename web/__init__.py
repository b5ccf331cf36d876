"""The operators' view of radtriage: dashboard, JSON API, /metrics, /healthz and /readyz.

:func:`web.app.create_app` builds the FastAPI app; :class:`web.server.WebServer` serves it with
uvicorn in a thread of the daemon (``daemon.service.Service`` starts it when ``web.enabled``).
Importing this package imports nothing heavy.
"""
