"""Backups of the embedded store's data folder (`kartero backup DIR`, `kartero restore DIR`).

Owns the backup folder's layout: the data folder's files as they were at one instant (`take.py`), a
`manifest.json` naming each with its size and SHA-256 (`manifest.py`), and putting them into an empty
data folder after every checksum matched (`restore.py`). Imports only `store.spool` (the spool folder's
name) and `control` (is a server running?); nothing imports it but `cli`.

Failure semantics: a backup that fails leaves its folder as it found it (what it wrote is removed); the
manifest is written last, so a folder without one is no backup. A restore writes nothing until the whole
backup has been read and matched its manifest; one interrupted while copying leaves only a staging folder
inside the data folder, which the next restore replaces.
"""
