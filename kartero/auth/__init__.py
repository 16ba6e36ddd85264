"""Accounts, aliases, password hashing and (later) SASL.

Owns: who the local users are and where an address delivers to. Uses the store for persistence and
imports no protocol core or network code. Passwords are argon2 hashes; clear text is never stored or
logged. Lookups fail closed: an address that resolves to nothing is unknown.
"""
