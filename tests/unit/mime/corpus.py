"""Real-world-shaped messages for MIME, FETCH and SEARCH tests (built here, never downloaded)."""

from __future__ import annotations

import base64

PLAIN = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: Bob <bob@example.test>, carol@example.test\r\n"
    b'Cc: "Team, Dev" <dev@example.test>\r\n'
    b"Subject: Quarterly report\r\n"
    b"Date: Mon, 02 Nov 2026 09:30:00 +0100\r\n"
    b"Message-ID: <plain-1@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the numbers are in.\r\n"
)

ALTERNATIVE = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@example.de>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
    b"Date: Tue, 03 Nov 2026 18:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="alt-b"\r\n'
    b"\r\n"
    b"This is a MIME message.\r\n"
    b"--alt-b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, Stra=C3=9Fenbahn\r\n"
    b"--alt-b\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"<p>Gr=C3=BC=C3=9Fe aus <b>K=C3=B6ln</b></p>\r\n"
    b"--alt-b--\r\n"
)

PDF = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\n"
PDF_B64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")

MIXED = (
    b"From: Carol <carol@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Invoice attached\r\n"
    b"Date: Wed, 04 Nov 2026 08:15:00 -0500\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=mixed\r\n"
    b"\r\n"
    b"--mixed\r\n"
    b'Content-Type: multipart/alternative; boundary="inner alt"\r\n'
    b"\r\n"
    b"--inner alt\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Please find the invoice attached.\r\n"
    b"--inner alt\r\n"
    b"Content-Type: text/html; charset=us-ascii\r\n"
    b"\r\n"
    b"<p>Please find the invoice attached.</p>\r\n"
    b"--inner alt--\r\n"
    b"\r\n"
    b"--mixed\r\n"
    b'Content-Type: application/pdf; name="invoice 2026-11.pdf"\r\n'
    b'Content-Disposition: attachment; filename="invoice 2026-11.pdf"; size=275\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-ID: <inv@example.test>\r\n"
    b"\r\n" + PDF_B64 + b"--mixed\r\n"
    b"Content-Type: image/png\r\n"
    b"Content-Disposition: inline\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Language: en, de\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--mixed--\r\n"
)

FORWARDED = (
    b"From: Dave <dave@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Fwd: Quarterly report\r\n"
    b"Date: Thu, 05 Nov 2026 12:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=fwd\r\n"
    b"\r\n"
    b"--fwd\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"See below.\r\n"
    b"--fwd\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"Content-Description: forwarded message\r\n"
    b"\r\n" + ALTERNATIVE + b"--fwd--\r\n"
)

LATIN1 = (
    b"From: =?iso-8859-1?q?Fran=E7ois?= <francois@example.fr>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: =?iso-8859-1?q?Caf=E9_cr=E8me?=\r\n"
    b"Content-Type: text/plain; charset=windows-1252\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Un caf\xe9 cr\xe8me, s'il vous pla\xeet \x80\r\n"
)

BROKEN = (
    b"From: broken@example.org\r\n"
    b"Subject: broken mime\r\n"
    b'Content-Type: multipart/mixed; boundary="never-closed"\r\n'
    b"\r\n"
    b"--never-closed\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--never-closed\r\n"
    b"Content-Type: garbage\r\n"
    b"\r\n"
    b"second part without end\r\n"
)

NO_BOUNDARY = b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nbody\r\n"
HEADERS_ONLY = b"Subject: only headers\r\nX-Other: 1\r\n"

ALL = (PLAIN, ALTERNATIVE, MIXED, FORWARDED, LATIN1, BROKEN, NO_BOUNDARY, HEADERS_ONLY)
