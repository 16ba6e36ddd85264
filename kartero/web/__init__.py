"""Kartero's HTTP side, on aiohttp in the server's own event loop: the web admin (`/admin/`), a user's
own page (`/`), the JSON API (`/api/v1/`) and Prometheus metrics (`/metrics`).

`ops.py` is what an administrator can do (blocking calls on the store, run in the worker pool); `auth.py`
who is asking (browser sessions with CSRF tokens, API bearer tokens, the shared login throttle); `app.py`
puts the routes together; `api.py` is the JSON API: one table of endpoints (`endpoints.py` says what an
entry holds, `schema.py` the checked, self-describing shapes of requests and answers) that makes its
routes, its request checks and its OpenAPI document; `listen.py` serves them on the `[listen] http/https`
addresses under the server's connection admission.
"""
