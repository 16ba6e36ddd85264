"""ManageSieve (RFC 5804), sans-I/O: `connection.ManageSieveConnection` takes bytes and returns events
and bytes; `syntax` reads a command's words and writes strings.

A protocol core: imports only the stdlib, `kartero.auth.sasl` and itself (no store, no sieve, no net). Scripts
are compiled by the adapter (the `CheckRequested` event), and the SIEVE capability's extensions come
from it. Failure semantics: every
input ends in a response (OK/NO/BYE); nothing raises out of the core except ProtocolViolation, which
only an adapter that answers what was not asked can cause.
"""
