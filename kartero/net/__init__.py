"""asyncio adapters: sockets, reads with deadlines, writes with flow control, STARTTLS, limits.

Adapters move bytes between the network and the sans-I/O cores and run the I/O behind each decision
(policy, store) off the event loop. They never parse a command or choose a reply code. A failure in
one session is logged and ends that session only.
"""
