"""Mail moving in and out: `kartero import` (a Maildir with Maildir++ folders as Dovecot keeps it, mbox
files, a whole IMAP account) and `kartero export` (a Maildir++ tree or mbox files).

Owns the readers and writers of those formats (`maildir.py`, `mbox.py`, `imap_source.py`), the message
buffer every source fills (`buffer.py`: bounded memory, SHA-256, LF to CRLF), the import run
(`importer.py`) over the store's import ledger (`ImportLedger`, served by `kartero.store.imports_sql`), and the export
(`exporter.py`). May import `store`, `imap` (modified UTF-7, the date-time syntax) and `mail`; never a
listener or the server: it stores through the `MailStore` interface as any delivery does.

Failure semantics: a message or folder that cannot be read or stored is counted as failed and the run
goes on; the ledger makes the next run store exactly what is missing, never a message twice.
"""
