"""DNS: domain-name canonical forms now; the resolver wrapper (timeouts, caching, test nameservers)
arrives with outbound delivery. Imports nothing from the protocol cores or the store.
"""
