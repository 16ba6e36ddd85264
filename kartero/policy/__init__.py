"""Decisions about what the SMTP listeners accept: Accept | Reject(reply), never exceptions.

May use auth, store, dns and mailauth; never net or the event loop. Lookups are blocking (SQLite), so
adapters call these from worker threads. A lookup failure is a transient reject (451/450), never an
accept.
"""
