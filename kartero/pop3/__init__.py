"""POP3, sans-I/O: the RFC 1939 state machine with CAPA, RESP-CODES, PIPELINING, UIDL, TOP, STLS and
SASL PLAIN. Imports only the stdlib (and the SASL core). The maildrop is INBOX; messages marked with DELE
are removed only after QUIT, so a lost connection deletes nothing.
"""
