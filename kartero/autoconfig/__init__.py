"""What mail clients and sending MTAs are told about this server, built from the config: the client
settings (host name and the ports of `[listen]`, or `[http] public_ports` where they differ), as
Thunderbird's autoconfig XML (`thunderbird.py`), Outlook's autodiscover answer (`autodiscover.py`, which
also reads its POX request, bounded and without DTDs) and an Apple configuration profile
(`mobileconfig.py`); the MTA-STS policy and its id (`mtasts.py`); the DNS records all of them need
(`records.py`, for `kartero dns` and the admin's DNS check).

Pure functions of the config and their arguments: no I/O, no store, no aiohttp (imports `config`, `dns`,
`mail` and the DNS check's record types only); `kartero/web/clients.py` serves them. Nothing here knows
whether a mailbox exists, so no answer can tell. Failures are values or the documented exceptions:
`autodiscover.RequestError` for a request not answered, `ValueError` from `mobileconfig.profile` when
there is nothing to describe.
"""
