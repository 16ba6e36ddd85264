"""MIME: header blocks, address lists, the part tree with offsets, and what IMAP keeps per message.

A pure library on bytes: imports only the stdlib, does no I/O, never raises on malformed mail (broken
input yields a best-effort structure). The store calls `index_message` once at delivery.
"""
