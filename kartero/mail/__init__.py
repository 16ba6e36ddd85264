"""The vocabulary every layer shares: mail addresses (RFC 5321/5322/6531 syntax) and the table of SMTP
replies. Pure data and parsing over the stdlib, so the protocol cores, policy, auth and delivery can all
use it without importing one another."""
