"""Kartero's HTTP side, on aiohttp in the server's own event loop: the web admin (`/admin/`), a user's
own page (`/`), the JSON API (`/api/v1/`) and Prometheus metrics (`/metrics`).

`ops.py` is what an administrator can do (blocking calls on the store, run in the worker pool); `auth.py`
who is asking (browser sessions with CSRF tokens, API bearer tokens, the shared login throttle); `app.py`
puts the routes together; `listen.py` serves them on the `[listen] http/https` addresses under the
server's connection admission.
"""
