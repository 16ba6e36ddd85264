"""Delivery to other mail servers: MX resolution (RFC 5321 §5.1, RFC 7505 null MX), SMTP client
sessions over the sans-I/O client core, opportunistic STARTTLS, connection reuse per destination.

Owns the network side of the queue. Returns an outcome per recipient (Delivered | Deferred | Failed):
2xx delivered, 4xx or a network/DNS problem deferred, 5xx failed. Local recipients never come here.
"""
