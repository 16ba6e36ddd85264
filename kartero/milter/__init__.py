"""The milter protocol client (version 6, as Postfix speaks it), sans-I/O: `protocol` has the packets and
their limits, `client` the state machine of one milter connection (negotiation, macros, the phases, the
replies and modification requests as values), `fields` splits a message into what a milter is shown.

Imports only `kartero.mail` and the stdlib (no asyncio, socket, ssl, time, store or config): the
asyncio adapter is kartero/filters/milter.py. A milter that breaks the protocol makes its client
`Failed`; nothing the milter sends raises out of this package.
"""
