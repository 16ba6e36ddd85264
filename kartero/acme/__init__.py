"""ACME certificates (RFC 8555) for every TLS listener: ordering, renewal, storage and status.

Owns: the renewal schedule (`schedule.py`, pure), the files under data_dir/acme/ (`storage.py`), the
answers to the CA's challenges while an order runs (`challenges.py`: http-01 tokens for the web side,
tls-alpn-01 contexts for the https listener, RFC 8737), the order itself on certbot's `acme` library
(`order.py`, blocking: it runs in a daemon thread, every request with a timeout), the background task
that orders and renews (`manager.py`), the cluster's shared state and ordering lead (`shared.py`, over the
store's rows) and `kartero cert status` (`status.py`).

Must not import: the protocol cores, `net`, `store`, `web`, `server`, `cli`. The server hands the task a
callback that installs a new certificate; the web side is handed the http-01 lookup as a callable.

Failure semantics: a failed order changes nothing that serves: the listeners keep the certificate they
have (the self-signed one until the first ACME certificate arrives); the failure is logged and kept in
data_dir/acme/state.json (a cluster: the database) for `kartero cert status`, and the next attempt waits
1 minute, doubling up to a day.
"""
