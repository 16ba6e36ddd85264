"""STYLE.md §4: every SMTP reply Kartero sends is a named constant in kartero/mail/replies.py, so a code
or its text is changed in one place and a review finds every use by name. Read from the source with
`ast`: a string that starts like a reply ("451 4.4.1 ...", also inside an f-string) or a `Reply(...)`
built from a literal code anywhere else is an offender. Parsing a remote server's reply builds a Reply
from the code it read, which is no literal."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "kartero"

EXEMPT = {
    "mail/replies.py",  # the table itself
    "imap/response.py",  # IMAP and POP3 keep their responses in their own modules (STYLE.md §4)
    "pop3/connection.py",
}

_REPLY_TEXT = re.compile(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3}")


def _is_reply_call(node: ast.Call) -> bool:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "Reply":
        return False
    codes = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "code")]
    return any(isinstance(code, ast.Constant) and isinstance(code.value, int) for code in codes)


def reply_literals(source: str, filename: str) -> list[str]:
    """Where `source` spells out a reply: "file:line: what"."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _REPLY_TEXT.match(node.value):
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Call) and _is_reply_call(node):
            found.append((node.lineno, ast.unparse(node)))
    return [f"{filename}:{line}: {what}" for line, what in sorted(found)]


def test_issue_10_no_reply_literals_outside_the_reply_table() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel not in EXEMPT:
            offenders += reply_literals(path.read_text(), rel)
    assert offenders == [], "name these replies in kartero/mail/replies.py:\n" + "\n".join(offenders)


def test_the_scan_finds_each_kind_of_literal() -> None:
    source = '''
from kartero.mail import replies
from kartero.mail.replies import Reply

a = "550 5.1.1 No such user"
b = f"451 4.4.1 Cannot connect to {host}"
c = Reply(554, "5.7.1", "Relay denied")
d = replies.Reply(code=421, enhanced=None, text="bye")
e = Reply(code, enhanced, text)  # a parsed reply: no literal
f = replies.NO_SUCH_USER.with_text("550 is not at the start")
g = "RFC 5321 §4.5.3.2 asks for 421 4.4.2"
'''
    assert reply_literals(source, "x.py") == [
        "x.py:5: '550 5.1.1 No such user'",
        "x.py:6: '451 4.4.1 Cannot connect to '",
        "x.py:7: Reply(554, '5.7.1', 'Relay denied')",
        "x.py:8: replies.Reply(code=421, enhanced=None, text='bye')",
    ]
