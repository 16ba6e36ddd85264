"""The durable outbound queue: when to try each remote recipient again, when to give up, and the
delivery status notifications (RFC 3464) that tell the sender.

Owns scheduling and DSNs; the bytes and per-recipient states live in the store, the network in
kartero/delivery (reached through the `Deliverer` protocol). Never imports a protocol core or net.
Failure semantics: a 4xx reply, a connection failure or a temporary DNS error defers the recipient
(retried with exponential backoff); a 5xx reply, a null MX, or a domain that keeps not existing fails it;
a recipient still deferred at `queue_lifetime` fails. Each failed recipient gets one failure DSN, each
long-deferred one delay DSN, unless NOTIFY says otherwise or the message had the null sender.
"""
