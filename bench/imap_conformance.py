# ruff: noqa: E501  (the scripts and corpus below are data: one exchange per string reads best)
"""Kartero's IMAP next to Dovecot 2.3's: the same scripted exchanges against both, differences side by side.

    python bench/imap_conformance.py                  # every script, differences printed with a count
    python bench/imap_conformance.py --only fetch     # the scripts whose name contains "fetch"
    python bench/imap_conformance.py --raw            # also print every exchange, not only differences

Starts a private Dovecot 2.3 (as root, Maildir, a private loopback port; bench/imap_bench.py's setup with
METADATA and NOTIFY enabled) and a private Kartero (embedded store in a temporary folder), loads the same
corpus into both INBOXes (multipart, message/rfc822, digest, raw UTF-8 and encoded-word headers, groups,
comments in addresses, NUL bytes, quoted-printable, base64, huge headers; file times = INTERNALDATE), then
plays each script in a fresh session on a fresh server pair and compares the responses to every command.

Normalised before comparing, because they legitimately differ: UIDVALIDITY, MODSEQ/HIGHESTMODSEQ values,
capability lists, human text after OK/NO/BAD and their codes, ID values, MAILBOXID/EMAILID/THREADID and
SAVEDATE values, MAILBOXID codes (OBJECTID), HIGHESTMODSEQ on SELECT/EXAMINE (RFC 7162 §3.1.2.1 asks for
it on every SELECT; Dovecot sends it once CONDSTORE is enabled), the order of items inside one FETCH
response, the order of untagged responses to one command (EXPUNGE/VANISHED order kept), and quoted string
versus literal versus atom for one string.

Dovecot 2.3.19 has no IMAP4rev2, OBJECTID, UNAUTHENTICATE, LIST-METADATA, CONTEXT=SORT, CREATE-SPECIAL-USE,
APPENDLIMIT or UTF8=ACCEPT, so the scripts stay on IMAP4rev1; the few commands that use one of those
(STATUS MAILBOXID/APPENDLIMIT/DELETED, CREATE ... USE, SORT RETURN (UPDATE)) show up as differences.
Its NOTIFY needs the notify plugin and METADATA needs mail_attribute_dict: both are configured.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.imap_bench import PASSWORD, USER, Server  # noqa: E402
from bench.imap_bench import start_dovecot as _start_dovecot  # noqa: E402
from bench.imap_bench import start_kartero as _start_kartero  # noqa: E402

BASE_TIME = 1_795_687_200  # 2026-11-26 00:00:00 UTC, INTERNALDATE of the first message

# -- the corpus -----------------------------------------------------------------------------------------


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def corpus() -> list[bytes]:
    """The messages both INBOXes start with, in this order (sequence number = index + 1)."""
    m: list[bytes] = []
    # 1 plain, display names, threading root
    m.append(_crlf("""From: Alice Example <alice@example.org>
To: Bob <bob@example.test>
Cc: carol@example.net
Subject: Project plan
Date: Mon, 02 Nov 2026 10:00:00 +0000
Message-ID: <root@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Here is the plan for alpha and bravo.
Second line.
"""))
    # 2 multipart/mixed: text, html, base64 attachment
    m.append(_crlf("""From: "Dave, D." <dave@example.com>
To: bob@example.test
Subject: Re: Project plan
Date: Tue, 03 Nov 2026 11:30:00 -0500
Message-ID: <reply1@example.com>
In-Reply-To: <root@example.org>
References: <root@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Caf\u00e9 charlie delta.
--outer
Content-Type: text/html; charset=us-ascii
Content-Disposition: inline

<p>charlie <b>delta</b></p>
--outer
Content-Type: application/octet-stream; name="data.bin"
Content-Disposition: attachment; filename="data.bin"
Content-Transfer-Encoding: base64
Content-ID: <part3@example.com>
Content-Description: some bytes
Content-Language: en

AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
--outer--
The epilogue.
"""))
    # 3 multipart/mixed holding a message/rfc822 that is itself multipart/alternative
    m.append(_crlf("""From: Eve <eve@example.org>
To: Bob <bob@example.test>
Subject: Fwd: inner message
Date: Wed, 04 Nov 2026 09:15:00 +0100
Message-ID: <fwd@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain

See the forwarded message.
--b1
Content-Type: message/rfc822
Content-Disposition: inline

From: Frank <frank@example.org>
To: Eve <eve@example.org>
Subject: inner subject echo
Date: Sun, 01 Nov 2026 08:00:00 +0000
Message-ID: <inner@example.org>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="b2"

--b2
Content-Type: text/plain

inner plain foxtrot
--b2
Content-Type: text/html

<i>inner html foxtrot</i>
--b2--

--b1--
"""))
    # 4 the whole body is message/rfc822, nested twice
    m.append(_crlf("""From: Gina <gina@example.org>
To: bob@example.test
Subject: wrapped twice
Date: Thu, 05 Nov 2026 12:00:00 +0000
MIME-Version: 1.0
Content-Type: message/rfc822

From: Hank <hank@example.org>
Subject: middle
Content-Type: message/rfc822

From: Ivy <ivy@example.org>
Subject: innermost golf

innermost body golf
"""))
    # 5 multipart/digest: parts default to message/rfc822
    m.append(_crlf("""From: List <list@example.org>
To: bob@example.test
Subject: Digest hotel
Date: Fri, 06 Nov 2026 07:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/digest; boundary="d"

--d

From: one@example.org
Subject: digest one

first digest body
--d

From: two@example.org
Subject: digest two
Content-Type: text/plain

second digest body
--d--
"""))
    # 6 raw UTF-8 and encoded-word headers
    m.append(_crlf("""From: =?ISO-8859-1?Q?Andr=E9?= Pirard <andre@example.org>
To: =?UTF-8?B?w4VzYQ==?= <asa@example.org>, "J\u00f6rg" <joerg@example.org>
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_M=C3=BCnchen?= india
Date: Sat, 07 Nov 2026 18:45:00 +0100
Message-ID: <utf8@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Gr\u00fc\u00dfe juliet, \u00e7a va?
"""))
    # 7 groups and an empty group
    m.append(_crlf("""From: Kim <kim@example.org>
To: undisclosed-recipients:;
Cc: team: a@example.org, "B B" <b@example.org>;, zed@example.org
Subject: group test
Date: Sun, 08 Nov 2026 08:08:08 +0000
Message-ID: <group@example.org>

group body kilo
"""))
    # 8 comments in addresses
    m.append(_crlf("""From: lima@example.org (Lima Person)
To: <user (c1)@ (c2) domain.example.org>
Cc: "Quoted Name" <quoted@example.org> (trailing comment)
Reply-To: (lead) reply@example.org
Subject: comments (in subject)
Date: Sun, 25 Mar 2007 00:00:00 +0200
Message-ID: <comments@example.org>

comment body mike
"""))
    # 9 NUL bytes in a part
    m.append(b"From: nul@example.org\r\nTo: bob@example.test\r\nSubject: nul bytes november\r\n"
             b"Date: Mon, 09 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="n"\r\n\r\n--n\r\nContent-Type: text/plain\r\n\r\n'
             b"clean part\r\n--n\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary"
             b"\r\n\r\nab\x00cd\x00\x01\x02ef\r\n--n--\r\n")  # fmt: skip
    # 10 quoted-printable: trailing whitespace, soft breaks, "=" + trailing whitespace
    m.append(b"From: qp@example.org\r\nTo: bob@example.test\r\nSubject: quoted printable oscar\r\n"
             b"Date: Tue, 10 Nov 2026 10:10:10 +0000\r\nMIME-Version: 1.0\r\n"
             b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n--q\r\nContent-Type: text/plain; charset=utf-8\r\n'
             b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
             b"caf=C3=A9 trailing   \r\nsoft=\r\nbreak and = \r\nspace-soft\r\nequals =3D end\r\n"
             b"--q\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             b"iVBORw0KGgo=\r\n--q--\r\n")  # fmt: skip
    # 11 huge headers: a 20 KB folded header and 100 Received lines
    received = "".join(f"Received: from relay{i}.example.org by mx.example.test; Mon, 11 Nov 2026 11:00:{i % 60:02d} +0000\n"
                       for i in range(100))  # fmt: skip
    folded = "X-Huge: " + "\n ".join(" ".join(f"word{i}-{j}" for j in range(8)) for i in range(250)) + "\n"
    m.append(_crlf(received + folded + """From: Papa <papa@example.org>
To: bob@example.test
Subject: huge headers papa
Date: Wed, 11 Nov 2026 11:11:11 +0000
Message-ID: <huge@example.org>

small body
"""))
    # 12 threading: reply to 2, with a subject that normalises to the same base
    m.append(_crlf("""From: Alice Example <alice@example.org>
To: "Dave, D." <dave@example.com>
Subject: RE: [list] Re: Project plan (fwd)
Date: Thu, 12 Nov 2026 12:00:00 +0000
Message-ID: <reply2@example.org>
In-Reply-To: <reply1@example.com>
References: <root@example.org> <reply1@example.com>

quebec reply
"""))
    # 13 no Date, no Message-ID, bad Subject encoding, Bcc, Sender
    m.append(_crlf("""From: romeo@example.org
Sender: secretary@example.org
To: bob@example.test
Bcc: hidden@example.org
Subject: =?unknown-charset?Q?broken=ZZ?= =?UTF-8?B?!!!?= sierra

no date here, tango
"""))
    # 14 only a Date with an obsolete zone and a two-digit year
    m.append(_crlf("""From: Uniform <uniform@example.org>
To: bob@example.test
Subject: old date
Date: 1 Jan 99 23:59:59 EST
Message-ID: <old@example.org>
Content-Type: text/plain; charset="iso-8859-1"; format=flowed
Content-Transfer-Encoding: quoted-printable

Gr=FC=DFe victor =
whiskey
"""))
    # 15 a very long subject and a Content-Type with RFC 2231 parameters
    m.append(_crlf("""From: Xray <xray@example.org>
To: bob@example.test
Subject: """ + " ".join(f"long{i}" for i in range(60)) + """
Date: Fri, 13 Nov 2026 13:13:13 +0000
Message-ID: <rfc2231@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="r"

--r
Content-Type: application/pdf; name*=utf-8''caf%C3%A9.pdf
Content-Disposition: attachment; filename*0="long"; filename*1="name.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--r--
"""))
    return m


# -- the scripts -----------------------------------------------------------------------------------------

LOGIN = f"LOGIN {USER} {PASSWORD}"


def lit(text: str) -> str:
    """A LITERAL+ literal holding `text` (UTF-8), for 8-bit arguments and message data."""
    return f"{{{len(text.encode())}+}}\r\n{text}"


APPEND_MESSAGE = "From: yankee@example.org\r\nSubject: appended zulu\r\nDate: Sat, 14 Nov 2026 14:00:00 +0000\r\n\r\nappended body\r\n"
APPEND = f'APPEND INBOX (\\Seen $Work) "14-Nov-2026 14:00:00 +0000" {lit(APPEND_MESSAGE)}'


def _fetch_items() -> list[str]:
    items = ["FLAGS", "UID", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY", "BODYSTRUCTURE", "ALL", "FAST",
             "FULL", "RFC822.HEADER", "BODY.PEEK[]", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "BODY.PEEK[1]",
             "BODY.PEEK[2]", "BODY.PEEK[1.MIME]", "BODY.PEEK[2.MIME]", "BODY.PEEK[1.1]", "BODY.PEEK[1.2]",
             "BODY.PEEK[2.HEADER]", "BODY.PEEK[2.TEXT]", "BODY.PEEK[2.1]", "BODY.PEEK[2.2]", "BODY.PEEK[3]",
             "BODY.PEEK[HEADER.FIELDS (From Subject)]", "BODY.PEEK[HEADER.FIELDS.NOT (Received X-Huge)]",
             "BODY.PEEK[1.HEADER.FIELDS (SUBJECT)]", "BODY.PEEK[]<0.20>", "BODY.PEEK[TEXT]<5.10>",
             "BODY.PEEK[1]<2.1000>", "BODY.PEEK[]<100000.10>", "BINARY.PEEK[]", "BINARY.PEEK[1]",
             "BINARY.PEEK[2]", "BINARY.SIZE[1]", "BINARY.SIZE[2]", "BINARY.SIZE[]", "BINARY.PEEK[1]<0.5>",
             "(UID FLAGS MODSEQ)", "(FLAGS BODY.PEEK[HEADER.FIELDS (DATE)])"]  # fmt: skip
    return items


def scripts() -> dict[str, list[str]]:
    s: dict[str, list[str]] = {}
    s["any-state"] = ["CAPABILITY", "NOOP", 'ID ("name" "conformance")', "ID NIL", "ENABLE CONDSTORE",
                      "SELECT INBOX", "LOGIN", "login bob wrong", LOGIN, "LOGIN x y", "capability", "noop",
                      "NOSUCHCOMMAND", "", "LOGOUT"]  # fmt: skip
    s["select"] = [LOGIN, "SELECT INBOX", "EXAMINE INBOX", "select inbox", "SELECT \"INBOX\"", "SELECT Inbox",
                   "SELECT nosuch", "SELECT a[b", "SELECT", "SELECT INBOX (CONDSTORE)", "EXAMINE INBOX (CONDSTORE)",
                   "SELECT INBOX (BOGUS)", "CHECK", "UNSELECT", "UNSELECT", "CHECK", "EXAMINE INBOX", "CLOSE",
                   "CLOSE", "FETCH 1 FLAGS", "EXPUNGE", "SEARCH ALL", "LOGOUT"]  # fmt: skip
    fetch = [LOGIN, "EXAMINE INBOX"]
    for item in _fetch_items():
        fetch.append(f"FETCH 1:* {item}")
    s["fetch"] = fetch
    low = [LOGIN, "EXAMINE INBOX"]
    for item in ("body.peek[header]", "body.peek[2.mime]", "binary.peek[]", "binary.size[1]", "body.peek[text]",
                 "body.peek[header.fields (from)]", "BODY.PEEK[Header.Fields.Not (to)]", "envelope", "uid flags",
                 "(rfc822.size internaldate)", "bodystructure"):  # fmt: skip
        low.append(f"fetch 1:4 {item}")
    low += ["uid fetch 1:* flags", "Uid Fetch 2,4 (Flags)", "fetch 1 rfc822", "fetch 1 rfc822.text",
            "fetch 1 body[]", "fetch 1 flags"]  # fmt: skip
    s["fetch-case"] = low
    s["fetch-errors"] = [LOGIN, "EXAMINE INBOX", "FETCH 0 FLAGS", "FETCH 99 FLAGS", "FETCH 1:99 FLAGS",
                         "FETCH * FLAGS", "FETCH *:1 UID", "FETCH 1, FLAGS", "FETCH 1,,2 FLAGS", "FETCH a FLAGS",
                         "FETCH 1 BOGUS", "FETCH 1 (FLAGS", "FETCH 1 BODY[4.5.6]", "FETCH 1 BODY[0]",
                         "FETCH 1 BODY[1.0]", "FETCH 1 BODY[HEADER.FIELDS]", "FETCH 1 BODY[HEADER.FIELDS ()]",
                         "FETCH 1 BODY[]<1>", "FETCH 1 BODY[]<1.0>", "FETCH 1 BINARY[HEADER]",
                         "FETCH 1 BINARY[1.MIME]", "FETCH 4294967296 FLAGS", "UID FETCH 0 FLAGS",
                         "UID FETCH 99 FLAGS", "UID FETCH 4294967295 FLAGS", "UID FETCH 99:* UID",
                         "FETCH 1 MODSEQ", "FETCH 1 (FLAGS) (CHANGEDSINCE 1)", "UID FETCH 1:* FLAGS (VANISHED)",
                         "FETCH", "FETCH 1"]  # fmt: skip
    search = [LOGIN, "EXAMINE INBOX"]
    keys = ["ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED",
            "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN", "KEYWORD $Work", "UNKEYWORD $Work", "BCC hidden",
            "BEFORE 05-Nov-2026", "BODY charlie", "CHARSET UTF-8 BODY " + lit("Caf\u00e9"), "CC team", "CC b@example.org", "FROM alice",
            "FROM lima", "FROM \"Lima Person\"", "FROM user@domain", "TO domain.example.org",
            "TO user@domain.example.org", "HEADER Message-ID reply1", "HEADER X-Huge word249-7",
            "HEADER Received relay99", "HEADER X-Nope \"\"", "LARGER 1000", "SMALLER 500", "NOT FROM alice",
            "OR FROM alice FROM eve", "ON 26-Nov-2026", "SENTBEFORE 05-Nov-2026", "SENTON 25-Mar-2007",
            "SENTSINCE 12-Nov-2026", "SENTON 01-Jan-1999", "SINCE 27-Nov-2026", "SUBJECT plan", "CHARSET UTF-8 SUBJECT " + lit("Gr\u00fc\u00dfe"),
            "SUBJECT \"Project plan\"", "TEXT foxtrot", "TEXT golf", "TEXT hotel", "TEXT victor", "TEXT \"digest two\"",
            "UID 1:3", "UID 5,7", "1:3", "2,4:5", "$", "* ", "1:* NOT 2", "(FROM alice SUBJECT plan)",
            "CHARSET UTF-8 SUBJECT " + lit("Gr\u00fc\u00dfe"), "CHARSET UTF-8 BODY " + lit("caf\u00e9"), "CHARSET US-ASCII ALL",
            "CHARSET BOGUS ALL", "MODSEQ 1", "BOGUSKEY", "FROM", "SENTON 32-Nov-2026", "UID 0",
            "TEXT juliet", "BODY oscar", "BODY \"trailing   \"", "HEADER SUBJECT \"\"", "SUBJECT \"\"",
            "TO undisclosed", "CC zed", "FROM andre", "CHARSET UTF-8 FROM " + lit("Andr\u00e9"), "CHARSET UTF-8 TO " + lit("\u00c5sa"), "CHARSET UTF-8 SUBJECT " + lit("\u00fc"),
            "OR OR SEEN FLAGGED DELETED", "NOT NOT ALL", "(((ALL)))", "larger 100 smaller 900", "from ALICE",
            "subject PLAN", "uid 1:*", "1:*", "*:3"]  # fmt: skip
    for key in keys:
        search.append(f"SEARCH {key}".rstrip())
    search += ["UID SEARCH FROM alice", "SEARCH RETURN () ALL", "SEARCH RETURN (MIN MAX COUNT) ALL",
               "SEARCH RETURN (ALL) 2:4", "SEARCH RETURN (SAVE) FROM alice", "FETCH $ UID", "SEARCH RETURN (COUNT) $",
               "UID SEARCH RETURN (MIN) FROM alice", "SEARCH RETURN (BOGUS) ALL", "SEARCH RETURN (MIN) NOT ALL",
               "SEARCH RETURN (PARTIAL 1:2) ALL", "SEARCH RETURN (MIN MAX) MODSEQ 1"]  # fmt: skip
    s["search"] = search
    sort = [LOGIN, "EXAMINE INBOX"]
    for crit in ("ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "REVERSE DATE", "REVERSE SUBJECT",
                 "SUBJECT DATE", "REVERSE SIZE ARRIVAL", "DISPLAYFROM", "DISPLAYTO", "BOGUS"):  # fmt: skip
        sort.append(f"SORT ({crit}) UTF-8 ALL")
    sort += ["UID SORT (FROM) UTF-8 ALL", "SORT (DATE) US-ASCII FROM alice", "SORT () UTF-8 ALL", "SORT (DATE) BOGUS ALL",
             "sort (date) utf-8 all", "SORT RETURN (MIN MAX COUNT) (DATE) UTF-8 ALL", "SORT RETURN (ALL) (SUBJECT) UTF-8 ALL",
             "UID SORT RETURN (MIN) (SIZE) UTF-8 ALL", "SORT RETURN (PARTIAL 1:3) (ARRIVAL) UTF-8 ALL",
             "THREAD REFERENCES UTF-8 ALL", "THREAD ORDEREDSUBJECT UTF-8 ALL", "UID THREAD REFERENCES UTF-8 ALL",
             "THREAD BOGUS UTF-8 ALL", "thread references utf-8 all", "THREAD REFERENCES UTF-8 SUBJECT plan"]  # fmt: skip
    s["sort-thread"] = sort
    s["list"] = [LOGIN, "CREATE Work", "CREATE Work/Sub", "CREATE Work/Sub/Deep", "CREATE Other", "CREATE Caf&AOk-",
                 "SUBSCRIBE Work/Sub", "LIST \"\" \"\"", "LIST \"\" *", "LIST \"\" %", "LIST \"\" Work/%",
                 "LIST Work/ %", "LIST \"\" work", "LIST \"\" inbox", "LIST \"\" INBOX*", "list \"\" *",
                 "LIST \"\" a[%", "LIST \"\" Caf&AOk-", "LIST \"\" &Jjo", "LIST (SUBSCRIBED) \"\" *",
                 "LIST (SUBSCRIBED RECURSIVEMATCH) \"\" %", "LIST (SPECIAL-USE) \"\" *", "LIST \"\" * RETURN (CHILDREN)",
                 "LIST \"\" * RETURN (SUBSCRIBED)", "LIST \"\" % RETURN (STATUS (MESSAGES UIDNEXT))",
                 "LIST \"\" * RETURN (SPECIAL-USE)", "LIST \"\" * RETURN (BOGUS)", "LIST (BOGUS) \"\" *",
                 "LIST \"\" (Work Other)", "LIST (RECURSIVEMATCH) \"\" *", "LSUB \"\" *", "LSUB \"\" %",
                 "lsub \"\" Work/%", "UNSUBSCRIBE Work/Sub", "UNSUBSCRIBE Work/Sub", "SUBSCRIBE NoSuch",
                 "LSUB \"\" *", "LIST", "LIST \"\"", "NAMESPACE", "namespace"]  # fmt: skip
    s["status"] = [LOGIN, "STATUS INBOX (MESSAGES)", "STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)",
                   "STATUS INBOX (SIZE)", "STATUS INBOX (DELETED)", "STATUS INBOX (HIGHESTMODSEQ)",
                   "STATUS INBOX (APPENDLIMIT)", "STATUS INBOX (MAILBOXID)", "STATUS inbox (messages)", "STATUS INBOX ()",
                   "STATUS INBOX (BOGUS)", "STATUS NoSuch (MESSAGES)", "STATUS INBOX", "STATUS Trash (MESSAGES UNSEEN)",
                   "SELECT INBOX", "STATUS INBOX (MESSAGES)"]  # fmt: skip
    s["mailbox-ops"] = [LOGIN, "CREATE A", "CREATE A", "CREATE a", "CREATE INBOX", "CREATE inbox", "CREATE B/",
                        "CREATE C/D", "LIST \"\" *", "RENAME A A2", "RENAME A2 B", "RENAME NoSuch X", "RENAME INBOX Old",
                        "SELECT Old", "SELECT INBOX", "DELETE C", "DELETE C/D", "DELETE C", "DELETE NoSuch", "DELETE INBOX",
                        "CREATE \"Sp ace\"", "LIST \"\" Sp*", "DELETE \"Sp ace\"", "CREATE X (USE (\\Flagged))",
                        "CREATE Y (USE (\\Bogus))", "LIST \"\" *", "CREATE \"\"", "CREATE {1+}\r\nZ", "LIST \"\" Z"]  # fmt: skip
    s["store"] = [LOGIN, "SELECT INBOX", "STORE 1 +FLAGS (\\Seen)", "STORE 2 FLAGS (\\Flagged $Work)",
                  "STORE 2 -FLAGS ($Work)", "STORE 3 +FLAGS.SILENT (\\Answered)", "FETCH 3 FLAGS",
                  "STORE 4 +FLAGS (NewKeyword)", "STORE 4 +FLAGS (\\Recent)", "STORE 4 +FLAGS (\\Bogus)",
                  "STORE 1:3 -FLAGS (\\Seen \\Flagged \\Answered)", "store 1 +flags (\\seen)", "STORE 1 +FLAGS \\Draft",
                  "STORE 1 BOGUS (\\Seen)", "STORE 99 +FLAGS (\\Seen)", "UID STORE 2 +FLAGS (\\Deleted)",
                  "STORE 5 (UNCHANGEDSINCE 1) +FLAGS (\\Seen)", "FETCH 5 (FLAGS MODSEQ)",
                  "STORE 6 (UNCHANGEDSINCE 99999) +FLAGS (\\Seen)", "UID STORE 1:* (UNCHANGEDSINCE 0) +FLAGS (x)",
                  "STORE 1 +FLAGS ()", "STORE 1 FLAGS ()", "FETCH 1:6 FLAGS", "SEARCH SEEN", "SEARCH NEW",
                  "SEARCH KEYWORD NewKeyword"]  # fmt: skip
    s["copy-move-expunge"] = [LOGIN, "CREATE Dest", "SELECT INBOX", "COPY 1:2 Dest", "COPY 1 NoSuch", "COPY 99 Dest",
                              "UID COPY 3 Dest", "MOVE 3 Dest", "FETCH 3 UID", "UID MOVE 4 Dest", "COPY 1 INBOX",
                              "FETCH * UID", APPEND, "FETCH * (UID FLAGS)", "STORE 1:2 +FLAGS.SILENT (\\Deleted)",
                              "UID EXPUNGE 1", "EXPUNGE", "SEARCH ALL", "STATUS Dest (MESSAGES UIDNEXT UNSEEN)",
                              "EXAMINE Dest", "FETCH 1:* (UID FLAGS)", "COPY 1 INBOX", "SELECT Dest",
                              "MOVE 1:* INBOX", "SELECT INBOX", "FETCH 1:* UID", "EXAMINE INBOX", "EXPUNGE",
                              "MOVE 1 Dest", "CLOSE"]  # fmt: skip
    s["append"] = [LOGIN, APPEND, "SELECT INBOX", APPEND, "FETCH * (FLAGS INTERNALDATE RFC822.SIZE)",
                   "APPEND NoSuch {3+}\r\nabc", "APPEND INBOX (\\Recent) {3+}\r\nabc",
                   "APPEND INBOX {0+}\r\n", "APPEND INBOX (\\Seen) \"01-Jan-2020 00:00:00 +0000\" " + lit("A: b\r\n\r\n"),
                   "FETCH * (FLAGS INTERNALDATE BODY.PEEK[])",
                   "APPEND INBOX {3+}\r\nabc {3+}\r\ndef", "FETCH 1:* UID",
                   "APPEND INBOX \"bad date\" {3+}\r\nabc"]  # last: Dovecot reads the literal as a command  # fmt: skip
    s["condstore-qresync"] = [LOGIN, "ENABLE CONDSTORE", "ENABLE QRESYNC", "ENABLE BOGUS", "enable qresync",
                              "SELECT INBOX", "STORE 1 +FLAGS (\\Seen)", "FETCH 1 (FLAGS MODSEQ)", "FETCH 1:* FLAGS (CHANGEDSINCE 1)",
                              "SEARCH MODSEQ 1", "STORE 2 +FLAGS (\\Deleted)", "EXPUNGE", "UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)",
                              "SELECT INBOX (QRESYNC (1 1))", "UNSELECT", "SELECT INBOX (QRESYNC (1 1 1:20))",
                              "UID SEARCH MODSEQ \"/flags/\\\\Seen\" all 1", "STATUS INBOX (HIGHESTMODSEQ)"]  # fmt: skip
    s["condstore-first"] = [LOGIN, "SELECT INBOX", "FETCH 1 MODSEQ", "FETCH 1 MODSEQ"]
    s["context"] = [LOGIN, "SELECT INBOX", "SEARCH RETURN (UPDATE) FROM alice", "SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL",
                    "STORE 1 +FLAGS (\\Deleted)", "EXPUNGE", "CANCELUPDATE \"a\"", "NOOP"]  # fmt: skip
    s["idle"] = [LOGIN, "SELECT INBOX", "IDLE", "NOOP", "IDLE"]
    s["metadata"] = [LOGIN, "GETMETADATA \"\" /private/comment", "SETMETADATA \"\" (/private/comment \"hello\")",
                     "GETMETADATA \"\" /private/comment", "SETMETADATA INBOX (/shared/comment \"x\")",
                     "GETMETADATA INBOX (/shared/comment /private/comment)", "GETMETADATA (DEPTH 1) INBOX /shared",
                     "GETMETADATA (MAXSIZE 0) INBOX /shared/comment", "SETMETADATA INBOX (/bogus \"x\")",
                     "SETMETADATA NoSuch (/private/comment \"x\")", "SETMETADATA INBOX (/shared/comment NIL)",
                     "GETMETADATA INBOX /shared/comment"]  # fmt: skip
    s["notify"] = [LOGIN, "NOTIFY SET (SELECTED (MessageNew (UID) MessageExpunge))", "NOTIFY NONE", "NOTIFY BOGUS",
                   "NOTIFY SET (PERSONAL (MailboxName))", "NOTIFY SET STATUS (INBOXES (MessageNew MessageExpunge))"]  # fmt: skip
    s["syntax"] = [LOGIN, "SELECT INBOX", "FETCH 1 (FLAGS))", "FETCH 1 FLAGS extra", "STORE 1 +FLAGS (\\Seen",
                   "SEARCH (FROM alice", "SEARCH FROM alice)", "CREATE", "RENAME A", "STATUS INBOX MESSAGES",
                   "FETCH 1:2:3 FLAGS", "FETCH -1 FLAGS", "FETCH 1:*:2 FLAGS", "COPY 1", "EXAMINE \"unterminated",
                   "LOGIN again again", "AUTHENTICATE PLAIN", "STARTTLS", "tag with space",
                   "UID", "UID BOGUS 1", "FETCH 1 BODY[HEADER.FIELDS (FROM)", "NOOP extra"]  # fmt: skip
    s["auth"] = ["AUTHENTICATE PLAIN " + __import__("base64").b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode(),
                 "SELECT INBOX", "FETCH 1 UID", "LOGOUT"]  # fmt: skip
    return s


# -- servers --------------------------------------------------------------------------------------------

DOVECOT_EXTRA = """\
mail_plugins = $mail_plugins notify
imap_metadata = yes
mail_attribute_dict = file:{root}/mail/%n/dovecot-attributes
mail_max_keyword_length = 50
namespace inbox {{
  inbox = yes
  separator = /
  mailbox INBOX {{
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
}}
"""


def start_dovecot(folder: Path, messages: list[bytes]) -> Server:
    return _start_dovecot(folder, messages, DOVECOT_EXTRA)  # METADATA, NOTIFY and special-use mailboxes


def start_kartero(folder: Path, messages: list[bytes]) -> Server:
    return _start_kartero(folder, messages)  # delivers message i with INTERNALDATE BASE_TIME + i


# -- the client -----------------------------------------------------------------------------------------


class Session:
    """A raw IMAP client: sends one command, reads every line up to its tagged response, literals inline."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.greeting = self._line()
        self.count = 0

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buffer += data

    def _line(self) -> bytes:
        """One response line with its literals: `... {n}\\r\\n<n bytes>...\\r\\n`."""
        out = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._fill()
            line, _, self.buffer = self.buffer.partition(b"\r\n")
            out += line
            literal = re.search(rb"~?\{(\d+)\}$", line)
            if literal is None:
                return out
            size = int(literal.group(1))
            while len(self.buffer) < size:
                self._fill()
            out += b"\r\n" + self.buffer[:size]
            self.buffer = self.buffer[size:]

    def command(self, text: str) -> list[bytes]:
        self.count += 1
        tag = f"c{self.count}".encode()
        if text.upper() == "IDLE":
            self.sock.sendall(tag + b" IDLE\r\n")
            lines = [self._line()]
            if lines[0].startswith(b"+"):
                self.sock.settimeout(0.3)
                with contextlib.suppress(TimeoutError):
                    lines.append(self._line())
                self.sock.settimeout(10)
                self.sock.sendall(b"DONE\r\n")
            else:
                return lines
        else:
            self.sock.sendall(tag + b" " + text.encode() + b"\r\n" if text else tag + b"\r\n")
            lines = []
        try:
            while True:
                line = self._line()
                lines.append(line)
                if line.startswith(tag + b" ") or line.startswith(b"* BYE"):
                    if line.startswith(b"* BYE") and not text.upper().startswith("LOGOUT"):
                        return lines
                    if line.startswith(tag + b" "):
                        return lines
        except (EOFError, OSError):
            lines.append(b"<connection closed>")
            return lines

    def close(self) -> None:
        self.sock.close()


# -- normalising ----------------------------------------------------------------------------------------

def tokenize(line: bytes) -> list[object]:
    """A response line as nested lists of atoms (str) and strings (("s", text)); literals become strings."""
    stack: list[list[object]] = [[]]
    i, n = 0, len(line)
    while i < n:
        c = line[i : i + 1]
        if c == b" ":
            i += 1
        elif c in b"([" and c:
            if c == b"[" and stack[-1] and isinstance(stack[-1][-1], str) and line[i - 1 : i] not in b" (":
                # "BODY[...]" style: the bracket belongs to the atom before it, up to its match
                depth, j = 0, i
                while j < n:
                    if line[j : j + 1] == b"[":
                        depth += 1
                    elif line[j : j + 1] == b"]":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                atom_end = j + 1
                while atom_end < n and line[atom_end : atom_end + 1] not in b" ()":
                    atom_end += 1
                stack[-1][-1] = str(stack[-1][-1]) + line[i:atom_end].decode("utf-8", "replace")
                i = atom_end
                continue
            stack.append([c.decode()])
            i += 1
        elif c in b")]" and c:
            if len(stack) > 1:
                done = stack.pop()
                stack[-1].append(done)
            else:
                stack[-1].append(c.decode())
            i += 1
        elif c == b'"':
            j, text = i + 1, bytearray()
            while j < n and line[j : j + 1] != b'"':
                if line[j : j + 1] == b"\\" and j + 1 < n:
                    j += 1
                text += line[j : j + 1]
                j += 1
            stack[-1].append(("s", text.decode("utf-8", "replace")))
            i = j + 1
        elif (c == b"{" or line[i : i + 2] == b"~{") and (m := re.match(rb"~?\{(\d+)\}\r\n", line[i:])):
            size = int(m.group(1))
            start = i + m.end()
            stack[-1].append(("s", line[start : start + size].decode("utf-8", "backslashreplace")))
            i = start + size
        else:
            j = i
            while j < n and line[j : j + 1] not in b' ()"' and not (line[j : j + 1] == b"]" and len(stack) > 1
                                                                   and stack[-1][0] == "["):  # fmt: skip
                if line[j : j + 1] == b"[":
                    break
                j += 1
            if j == i:
                j = i + 1
            stack[-1].append(line[i:j].decode("utf-8", "replace"))
            i = j
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def render(tokens: list[object]) -> str:
    out = []
    for t in tokens:
        if isinstance(t, tuple):
            text = t[1]
            if text and text.upper() != "NIL" and re.fullmatch(r"[A-Za-z0-9&/.$_+:@-]+", text):
                out.append(text)  # an astring: atom or quoted is the same string
                continue
            out.append('"' + (text if len(text) <= 200 else text[:200] + f"...({len(text)} chars)")
                       .replace("\r\n", "\\r\\n").replace("\x00", "\\0") + '"')  # fmt: skip
        elif isinstance(t, list):
            opener = t[0]
            closer = ")" if opener == "(" else "]"
            out.append(opener + render(t[1:]) + closer)
        else:
            out.append(str(t))
    return " ".join(out)


_ID_LIKE = {"MAILBOXID", "EMAILID", "THREADID", "MODSEQ", "SAVEDATE"}


def _normal_fetch(items: list[object]) -> list[object]:
    """FETCH items as (name, value) pairs sorted by name; id-like values replaced."""
    pairs = []
    body = items[1:]
    for k in range(0, len(body) - 1, 2):
        name, value = body[k], body[k + 1]
        if isinstance(name, str) and name.upper() in _ID_LIKE:
            value = "<id>"
        pairs.append((str(name).upper() if isinstance(name, str) else str(name), value))
    pairs.sort(key=lambda p: p[0])
    flat: list[object] = ["("]
    for name, value in pairs:
        if name == "FLAGS" and isinstance(value, list):
            value = ["(", *sorted(str(f) for f in value[1:])]
        flat += [name, value]
    return flat


def normalise(line: bytes, tag: bytes) -> str:
    if line.startswith(tag + b" "):
        line = b"TAG " + line[len(tag) + 1 :]
    tokens = tokenize(line)
    if len(tokens) >= 2 and tokens[1] in ("CAPABILITY",) and tokens[0] == "*":
        return "* CAPABILITY <caps>"
    if len(tokens) >= 2 and isinstance(tokens[1], str) and tokens[1].upper() == "ID" and tokens[0] == "*":
        return "* ID <id>"
    # status responses: keep the code, drop the human text
    for k in (1, 2):
        if len(tokens) > k and isinstance(tokens[k], str) and tokens[k].upper() in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
            if k == 2 and not (isinstance(tokens[1], str) and tokens[1].upper() in ("TAG",)):
                continue
            head = tokens[: k + 1]
            rest = tokens[k + 1 :]
            if rest and isinstance(rest[0], list) and rest[0][0] == "[":
                code = list(rest[0])
                name = str(code[1]).upper() if len(code) > 1 else ""
                if name == "MAILBOXID" and head[0] == "TAG":
                    return render(head)  # CREATE's MAILBOXID: OBJECTID (RFC 8474), not in Dovecot 2.3
                if name in ("UIDVALIDITY", "HIGHESTMODSEQ", "MAILBOXID", "NOMODSEQ"):
                    code = ["[", name] + (["<n>"] if len(code) > 2 else [])
                elif name in ("CAPABILITY",):
                    code = ["[", "CAPABILITY", "<caps>"]
                elif name in ("APPENDUID", "COPYUID") and len(code) > 2:
                    code = ["[", name, "<uidvalidity>", *code[3:]]
                return render([*head, code])
            return render(head)
    if len(tokens) >= 4 and tokens[0] == "*" and str(tokens[2]).upper() == "FETCH" and isinstance(tokens[3], list):
        tokens[3] = _normal_fetch(tokens[3])
    if len(tokens) >= 2 and tokens[0] == "*" and isinstance(tokens[1], str) and tokens[1].upper() == "ESEARCH":
        tokens = _esearch(tokens)
    if len(tokens) >= 2 and tokens[0] == "*" and isinstance(tokens[1], str) and tokens[1].upper() in ("SEARCH", "SORT"):
        # "(MODSEQ n)" at the end of SEARCH results
        tokens = [t if not (isinstance(t, list) and len(t) == 3 and str(t[1]).upper() == "MODSEQ") else ["(", "MODSEQ", "<n>"]
                  for t in tokens]  # fmt: skip
    if len(tokens) >= 4 and tokens[0] == "*" and str(tokens[1]).upper() == "STATUS" and isinstance(tokens[-1], list):
        tokens[-1] = _normal_status(tokens[-1])
    if len(tokens) >= 2 and tokens[0] == "*" and str(tokens[1]).upper() in ("LIST", "LSUB") and isinstance(tokens[2], list):
        tokens[2] = ["(", *sorted(str(f) for f in tokens[2][1:])]
    return render(tokens)


def _esearch(tokens: list[object]) -> list[object]:
    """ESEARCH: MODSEQ values replaced."""
    out = list(tokens)
    for k in range(len(out) - 1):
        if isinstance(out[k], str) and str(out[k]).upper() == "MODSEQ":
            out[k + 1] = "<n>"
    return out


def _normal_status(items: list[object]) -> list[object]:
    body = items[1:]
    pairs = []
    for k in range(0, len(body) - 1, 2):
        name, value = str(body[k]).upper(), body[k + 1]
        if name in ("UIDVALIDITY", "HIGHESTMODSEQ", "MAILBOXID"):
            value = "<n>"
        pairs.append((name, value))
    flat: list[object] = ["("]
    for name, value in pairs:
        flat += [name, value]
    return flat


def canonical(lines: list[bytes], tag: bytes, command: str) -> list[str]:
    # MAILBOXID on SELECT is OBJECTID's (RFC 8474), which Dovecot 2.3 does not offer. HIGHESTMODSEQ on every
    # SELECT/EXAMINE is what RFC 7162 §3.1.2.1 asks of a server with persistent mod-sequences; Dovecot sends
    # it only once CONDSTORE is enabled.
    selecting = command.split(" ", 1)[0].upper() in ("SELECT", "EXAMINE")
    normal = [x for x in (normalise(line, tag) for line in lines)
              if not x.startswith("* OK [MAILBOXID") and not (selecting and x.startswith("* OK [HIGHESTMODSEQ"))]  # fmt: skip
    tagged = [x for x in normal if not x.startswith("*") and not x.startswith("+")]
    ordered = [x for x in normal if re.match(r"\* \d+ EXPUNGE|\* VANISHED", x)]
    rest = sorted(x for x in normal if x not in tagged and x not in ordered and not x.startswith("+"))
    cont = [x[:1] for x in normal if x.startswith("+")]
    return cont + ordered + rest + tagged


# -- running --------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    script: str
    command: str
    kartero: list[bytes]
    dovecot: list[bytes]
    kartero_normal: list[str]
    dovecot_normal: list[str]


def play(port: int, commands: list[str]) -> list[list[bytes]]:
    session = Session(port)
    out = []
    try:
        for command in commands:
            out.append(session.command(command))
    finally:
        session.close()
    return out


def run_all(selected: dict[str, list[str]], messages: list[bytes], tmp: Path) -> Iterator[Exchange]:
    for name, commands in selected.items():
        results = {}
        for kind in ("kartero", "dovecot"):
            folder = tmp / f"{name}-{kind}"
            folder.mkdir()
            server = (start_kartero if kind == "kartero" else start_dovecot)(folder, messages)
            try:
                results[kind] = play(server.port, commands)
            finally:
                server.stop()
        for i, command in enumerate(commands):
            tag = f"c{i + 1}".encode()
            k, d = results["kartero"][i], results["dovecot"][i]
            yield Exchange(name, command, k, d, canonical(k, tag, command), canonical(d, tag, command))


def side_by_side(left: list[str], right: list[str], width: int = 78) -> str:
    """Equal lines once, differing lines as a K(artero)/D(ovecot) pair starting a little before where they part."""
    import difflib

    rows = []
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            for x in left[a1:a2][:2]:
                rows.append(f"  = {_cut(x, width)}")
            if a2 - a1 > 2:
                rows.append(f"  = ... {a2 - a1 - 2} more equal lines")
            continue
        for j in range(max(a2 - a1, b2 - b1)):
            x = left[a1 + j] if a1 + j < a2 else "(none)"
            y = right[b1 + j] if b1 + j < b2 else "(none)"
            start = len(os.path.commonprefix([x, y]))  # noqa: RUF071 (characters are what we want)
            start = 0 if start < width // 2 else start - width // 4
            prefix = "..." if start else ""
            rows.append(f"  K {prefix}{_cut(x[start:], 2 * width)}")
            rows.append(f"  D {prefix}{_cut(y[start:], 2 * width)}")
    return "\n".join(rows)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run the scripts whose name contains this")
    parser.add_argument("--raw", action="store_true", help="print every exchange")
    parser.add_argument("--width", type=int, default=78)
    args = parser.parse_args()
    selected = {k: v for k, v in scripts().items() if not args.only or args.only in k}
    total = sum(len(v) for v in selected.values())
    print(f"{len(selected)} scripts, {total} commands; left: Kartero, right: Dovecot 2.3 (normalised)\n")
    differences = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="kartero-imap-conformance-") as tmp:
        for ex in run_all(selected, corpus(), Path(tmp)):
            same = ex.kartero_normal == ex.dovecot_normal
            if same and not args.raw:
                continue
            if not same:
                differences[ex.script] += 1
            print(f"{'DIFF' if not same else 'same'} [{ex.script}] C: {ex.command[:150]!s}")
            print(side_by_side(ex.kartero_normal, ex.dovecot_normal, args.width))
            print(flush=True)
    print(f"{sum(differences.values())} of {total} commands answered differently")
    for name, count in differences.most_common():
        print(f"  {name:20} {count}")


if __name__ == "__main__":
    main()
