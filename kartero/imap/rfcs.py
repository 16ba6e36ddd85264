"""What Kartero's IMAP supports, RFC by RFC: one row per capability it advertises (and the base
protocols), rendered into docs/imap.md, so the document follows the capability list (a unit test checks
both ways: every advertised capability has a row, and docs/imap.md is what `render()` gives).

Regenerate the document with `python -m kartero.imap.rfcs > docs/imap.md`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Support:
    capability: str  # as advertised; "" for what has no capability of its own
    rfc: str
    title: str
    notes: str = ""


TABLE: tuple[Support, ...] = (
    Support("IMAP4rev2", "RFC 9051", "IMAP version 4rev2", "no \\Recent once a client enables IMAP4rev2"),
    Support("IMAP4rev1", "RFC 3501", "IMAP version 4rev1",
            "\\Recent given to exactly one session; * n RECENT after SELECT, new mail and expunges"),
    Support("", "RFC 2180", "IMAP4 multi-accessed mailbox practice",
            "expunges held back during FETCH, STORE, SEARCH; a message expunged elsewhere stays readable and "
            "STORE changes it in the session's view until the EXPUNGE is reported; COPY/MOVE of it: the "
            "EXPUNGE, then NO [EXPUNGEISSUED]"),
    Support("STARTTLS", "RFC 9051 §6.2.1", "STARTTLS", "plain text is dropped after the command (CVE-2011-0411)"),
    Support("LOGINDISABLED", "RFC 9051 §6.2.3", "LOGIN refused before TLS", "off loopback"),
    Support("AUTH=PLAIN", "RFC 4616", "SASL PLAIN"),
    Support("SASL-IR", "RFC 4959", "SASL initial response"),
    Support("LITERAL+", "RFC 7888", "non-synchronising literals"),
    Support("ID", "RFC 2971", "ID"),
    Support("ENABLE", "RFC 5161", "ENABLE"),
    Support("IDLE", "RFC 2177", "IDLE", "new mail and changes pushed at once"),
    Support("NAMESPACE", "RFC 2342", "NAMESPACE", "one personal namespace, separator \"/\""),
    Support("UIDPLUS", "RFC 4315", "UIDPLUS", "APPENDUID, COPYUID, UID EXPUNGE"),
    Support("MOVE", "RFC 6851", "MOVE"),
    Support("UNSELECT", "RFC 3691", "UNSELECT"),
    Support("CHILDREN", "RFC 3348", "child mailbox attributes"),
    Support("SPECIAL-USE", "RFC 6154", "special-use mailboxes", "Sent, Drafts, Trash, Junk, Archive"),
    Support("CREATE-SPECIAL-USE", "RFC 6154", "CREATE with USE"),
    Support("LIST-EXTENDED", "RFC 5258", "LIST extensions"),
    Support("LIST-STATUS", "RFC 5819", "LIST RETURN STATUS"),
    Support("STATUS=SIZE", "RFC 8438", "STATUS SIZE"),
    Support("ESEARCH", "RFC 4731", "extended SEARCH"),
    Support("SEARCHRES", "RFC 5182", "SEARCH result variable `$`"),
    Support("SORT", "RFC 5256", "SORT"),
    Support("SORT=DISPLAY", "RFC 5957", "DISPLAYFROM and DISPLAYTO sort keys"),
    Support("THREAD=ORDEREDSUBJECT", "RFC 5256", "THREAD by subject"),
    Support("THREAD=REFERENCES", "RFC 5256", "THREAD by References", "the last 1,000 ids of References read"),
    Support("ESORT", "RFC 5267 §3", "SORT RETURN options", "ALL in sort order"),
    Support("CONTEXT=SEARCH", "RFC 5267 §4", "PARTIAL and UPDATE (ADDTO/REMOVEFROM) for SEARCH, CANCELUPDATE",
            "PARTIAL as RFC 5267 (positive ranges; not RFC 9394's); 5 updating searches a session"),
    Support("CONTEXT=SORT", "RFC 5267 §4", "PARTIAL and UPDATE for SORT", "updates at their sort positions"),
    Support("CONDSTORE", "RFC 7162", "conditional STORE, MODSEQ"),
    Support("QRESYNC", "RFC 7162", "quick resynchronisation, VANISHED",
            "[CLOSED] on every SELECT/EXAMINE that closes a mailbox, QRESYNC enabled or not"),
    Support("BINARY", "RFC 3516", "BINARY fetch"),
    Support("UTF8=ACCEPT", "RFC 6855", "UTF-8 mailbox names and headers"),
    Support("APPENDLIMIT", "RFC 7889", "APPENDLIMIT", "the configured message size"),
    Support("MULTIAPPEND", "RFC 3502", "several messages in one APPEND", "all or none"),
    Support("CATENATE", "RFC 4469", "APPEND from TEXT parts and IMAP URLs",
            "relative URLs of the user's own messages (RFC 5092 form), BADURL for any other; past 1 MiB "
            "assembled in a spool file"),
    Support("SAVEDATE", "RFC 8514", "save date", "NIL for messages stored before Kartero kept it"),
    Support("OBJECTID", "RFC 8474", "object identifiers", "MAILBOXID kept across RENAME; THREADID NIL"),
    Support("PREVIEW", "RFC 8970", "message preview", "kept with the message; older mail's on first FETCH"),
    Support("METADATA", "RFC 5464", "mailbox and server annotations", "kept per account; 100 entries, 64 KiB values"),
    Support("METADATA-SERVER", "RFC 5464", "server annotations", "GETMETADATA/SETMETADATA on mailbox \"\""),
    Support("LIST-METADATA", "RFC 9590", "LIST RETURN (METADATA (...))", "with MAXSIZE and DEPTH"),
    Support("UNAUTHENTICATE", "RFC 8437", "UNAUTHENTICATE"),
    Support("NOTIFY", "RFC 5465", "NOTIFY", "every mailbox filter; message, MailboxName, SubscriptionChange, "
            "MailboxMetadataChange and ServerMetadataChange events (entry names only, RFC 5464 §4.4.2); "
            "AnnotationChange: BADEVENT; outside SELECTED each message event alone, as in Dovecot"),
    Support("QUOTA", "RFC 9208", "GETQUOTA, GETQUOTAROOT",
            "one root \"\" per account, all its mailboxes; a root only when a limit applies; SETQUOTA: NO "
            "[NOPERM] (`kartero user quota`); STATUS DELETED and DELETED-STORAGE; APPEND/COPY past the limit: "
            "NO [OVERQUOTA] (MOVE within the account always allowed)"),
    Support("QUOTA=RES-STORAGE", "RFC 9208 §5.1", "STORAGE resource",
            "the sizes of all the account's messages, in KiB: usage rounded up, the limit down"),
    Support("COMPRESS=DEFLATE", "RFC 4978", "COMPRESS", "inflated a bounded step at a time"),
)


def render() -> str:
    """docs/imap.md."""
    lines = [
        "# IMAP support, RFC by RFC",
        "",
        "Generated from `kartero/imap/rfcs.py` (`python -m kartero.imap.rfcs > docs/imap.md`); a test keeps it in",
        "step with the capabilities the server advertises. Limits on client input are in architecture.md,",
        '"Hostile input".',
        "",
        "| capability | RFC | what | notes |",
        "| --- | --- | --- | --- |",
    ]
    for row in TABLE:
        capability = f"`{row.capability}`" if row.capability else "(no capability)"
        lines.append(f"| {capability} | {row.rfc} | {row.title} | {row.notes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
