"""Issue 8, finding 10 and "linear work" for the SMTP server core: inputs that raised, or cost more than
their size, before; each is now a reply (exact bytes) in time linear in the input."""

from __future__ import annotations

from tests.unit.smtp.test_server_transcripts import EHLO
from tests.unit.smtp.transcript import run_transcript


def test_issue_8_non_ascii_parameter_values_are_replies_not_crashes() -> None:
    # BODY=é raised ValueError from Reply (the value was echoed into a reply: replies are ASCII).
    run_transcript(
        EHLO
        + f"""
        C: MAIL FROM:<a@example.org> BODY=\u00e9
        S: 555 5.5.4 BODY value not supported
        C: MAIL FROM:<a@example.org> BODY=8B\u0131TMIME
        S: 555 5.5.4 BODY value not supported
        C: MAIL FROM:<a@example.org> BODY={"X" * 900}
        S: 555 5.5.4 BODY value not supported
        C: MAIL FROM:<a@example.org> RET=HDR\u017f
        S: 501 5.5.4 RET must be FULL or HDRS
        C: MAIL FROM:<a@example.org> {"X" * 600}=1 {"X" * 600}=2
        S: 501 5.5.4 Duplicate parameter
        C: MAIL FROM:<a@example.org> BODY=8bitmime RET=hdrs
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test> NOTIFY=\u017fUCCESS
        S: 501 5.5.4 Bad NOTIFY value
        C: RCPT TO:<b@example.test> NOTIFY=success
        S: 250 2.1.5 Recipient OK
        """
    )


def test_issue_8_xtext_must_decode_to_printable_ascii() -> None:
    # RFC 3461 §4.2 and §4.4: "+0D+0A" in ENVID or ORCPT would put a line break into the DSN we build.
    rec, _ = run_transcript(
        EHLO
        + """
        C: MAIL FROM:<a@example.org> ENVID=x+0D+0ABcc:+20evil@example.org
        S: 501 5.5.4 xtext value must decode to printable ASCII
        C: MAIL FROM:<a@example.org> ENVID=x+00
        S: 501 5.5.4 xtext value must decode to printable ASCII
        C: MAIL FROM:<a@example.org> ENVID=a+20b+2Bc
        S: 250 2.1.0 Sender OK
        C: RCPT TO:<b@example.test> ORCPT=rfc822;b+0A@example.test
        S: 501 5.5.4 xtext value must decode to printable ASCII
        C: RCPT TO:<b@example.test> ORCPT=rfc822;b+2Bx@example.test
        S: 250 2.1.5 Recipient OK
        """
    )
    assert rec.events[-1].params.orcpt == ("rfc822", "b+x@example.test")  # type: ignore[attr-defined]
