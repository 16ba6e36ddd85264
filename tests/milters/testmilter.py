"""A milter for tests, on Debian's python3-milter (pymilter); run it with /usr/bin/python3:

    /usr/bin/python3 tests/milters/testmilter.py inet:PORT@127.0.0.1 [LOGFILE]

What it does is chosen by the message, so the same milter serves Kartero's and Postfix's tests:
- HELO name "reject-helo.test": reject at HELO.
- sender local part "reject-mail", "tempfail-mail", "replycode-mail", "discard-mail", "accept-mail": that
  answer at MAIL; recipient local part "reject-rcpt", "tempfail-rcpt", "replycode-rcpt", "discard-rcpt":
  that answer at RCPT (the other recipients are accepted).
- a header field "X-Test-Action: a, b, ..." with any of: add-header, add-folded-header, insert-header,
  change-header (Subject), delete-header (X-Delete-Me), add-rcpt, del-rcpt, replace-body, change-from,
  quarantine, and one final answer: reject, tempfail, discard, replycode, accept (default continue);
  "reject-at-header" rejects at that header field, "skip-body" answers SKIP to the first body chunk,
  "sleep" sleeps X-Test-Sleep seconds (default 3) before answering the end of the message.
  "X-Test-Arg: <addr>" is the address for add-rcpt, del-rcpt and change-from.
With LOGFILE, one JSON line per message: the macros, header fields and body it saw (for assertions).
"""

from __future__ import annotations

import json
import sys
import time

import Milter

MACROS = ("j", "{daemon_name}", "{daemon_addr}", "v", "_", "{client_addr}", "{client_port}", "{client_name}",
          "{client_ptr}", "{client_resolve}", "i", "{tls_version}", "{cipher}", "{auth_authen}", "{mail_addr}",
          "{mail_host}", "{mail_mailer}", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}")  # fmt: skip
LOGFILE = sys.argv[2] if len(sys.argv) > 2 else ""
REPLACED_BODY = b"Replaced body.\r\nSecond line.\r\n"


def local_part(address: str) -> str:
    return address.strip("<>").split("@")[0].lower()


class TestMilter(Milter.Base):
    def __init__(self) -> None:
        self.seen: dict[str, object] = {}
        self.reset()

    def reset(self) -> None:
        self.headers: list[list[str]] = []
        self.body_bytes = b""
        self.actions: list[str] = []
        self.arg = ""
        self.sleep_s = 3.0
        self.rcpts: list[str] = []
        self.mail_from = ""

    def macros(self, stage: str) -> None:
        found = {name: self.getsymval(name) for name in MACROS}
        self.seen[stage] = {name: value for name, value in found.items() if value is not None}

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        self.seen = {"connect": [hostname, list(hostaddr) if isinstance(hostaddr, tuple) else hostaddr]}
        self.macros("connect_macros")
        return Milter.CONTINUE

    def hello(self, hostname):  # type: ignore[no-untyped-def]
        self.seen["helo"] = hostname
        return Milter.REJECT if hostname == "reject-helo.test" else Milter.CONTINUE

    def envfrom(self, mailfrom, *params):  # type: ignore[no-untyped-def]
        self.reset()
        self.mail_from = mailfrom
        self.seen["mail"] = [mailfrom, *params]
        self.macros("mail_macros")
        return self.answer(local_part(mailfrom), "mail")

    def envrcpt(self, rcpt, *params):  # type: ignore[no-untyped-def]
        self.rcpts.append(rcpt)
        self.seen["rcpt"] = [*self.seen.get("rcpt", []), [rcpt, *params]]  # type: ignore[list-item]
        self.macros("rcpt_macros")
        return self.answer(local_part(rcpt), "rcpt")

    def answer(self, local: str, phase: str):  # type: ignore[no-untyped-def]
        if local == f"reject-{phase}":
            return Milter.REJECT
        if local == f"tempfail-{phase}":
            return Milter.TEMPFAIL
        if local == f"discard-{phase}":
            return Milter.DISCARD
        if local == f"accept-{phase}":
            return Milter.ACCEPT
        if local == f"replycode-{phase}":
            self.setreply("553", "5.7.2", f"Custom refusal at {phase}", "second line")
            return Milter.REJECT
        return Milter.CONTINUE

    def data(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def header(self, name, value):  # type: ignore[no-untyped-def]
        self.headers.append([name, value])
        if name.lower() == "x-test-action":
            self.actions += [a.strip() for a in value.split(",") if a.strip()]
            if "reject-at-header" in self.actions:
                return Milter.REJECT
        elif name.lower() == "x-test-arg":
            self.arg = value.strip()
        elif name.lower() == "x-test-sleep":
            self.sleep_s = float(value)
        return Milter.CONTINUE

    def eoh(self):  # type: ignore[no-untyped-def]
        self.macros("eoh_macros")
        return Milter.CONTINUE

    def body(self, chunk):  # type: ignore[no-untyped-def]
        self.body_bytes += chunk
        if "skip-body" in self.actions and self._protocol & Milter.P_SKIP:
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):  # type: ignore[no-untyped-def]
        self.macros("eom_macros")
        self.log_message()
        final = Milter.CONTINUE
        for action in self.actions:
            if action == "add-header":
                self.addheader("X-Test-Added", "yes")
            elif action == "add-folded-header":
                self.addheader("X-Test-Folded", "first line\n\tsecond line")
            elif action == "insert-header":
                self.addheader("X-Test-Inserted", "at the top", 0)
            elif action == "change-header":
                self.chgheader("Subject", 1, "changed by the milter")
            elif action == "delete-header":
                self.chgheader("X-Delete-Me", 1, None)
            elif action == "add-rcpt":
                self.addrcpt(f"<{self.arg or 'added@example.test'}>")
            elif action == "del-rcpt":
                self.delrcpt(f"<{self.arg}>" if self.arg else self.rcpts[-1])
            elif action == "replace-body":
                self.replacebody(REPLACED_BODY)
            elif action == "change-from":
                self.chgfrom(f"<{self.arg or 'changed@example.org'}>")
            elif action == "quarantine":
                self.quarantine("test quarantine")
            elif action == "sleep":
                time.sleep(self.sleep_s)
            elif action == "reject":
                final = Milter.REJECT
            elif action == "tempfail":
                final = Milter.TEMPFAIL
            elif action == "discard":
                final = Milter.DISCARD
            elif action == "accept":
                final = Milter.ACCEPT
            elif action == "replycode":
                self.setreply("550", "5.7.0", "Custom rejection by the test milter", "with a second line")
                final = Milter.REJECT
        return final

    def abort(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def close(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def log_message(self) -> None:
        if not LOGFILE:
            return
        record = {**self.seen, "headers": self.headers, "body": self.body_bytes.decode("utf-8", "replace"),
                  "protocol": self._protocol}  # fmt: skip
        with open(LOGFILE, "a") as log:
            log.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    Milter.factory = TestMilter
    Milter.runmilter("kartero-test-milter", sys.argv[1], timeout=60)
