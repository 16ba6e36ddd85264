"""Kartero: a complete mail server (SMTP, and later IMAP, POP3, queue, SPF/DKIM/DMARC) in Python."""
