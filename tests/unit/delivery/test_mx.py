"""Where mail for a domain goes, and the named replies (issue 10) when it can go nowhere: their text is
what the queue listing and a DSN showed before they were named."""

from __future__ import annotations

import asyncio

from kartero.delivery.mx import Hop, NoRoute, Route, find_route
from kartero.dns.resolver import MXRecord, MXRecords, NoRecords, Resolver, Temporary


class Answers(Resolver):
    def __init__(self, answer: MXRecords | NoRecords | Temporary) -> None:
        super().__init__([("127.0.0.1", 53)])  # never asked: mx() is answered here
        self.answer = answer

    async def mx(self, domain: str) -> MXRecords | NoRecords | Temporary:
        return self.answer


def route(domain: str, answer: MXRecords | NoRecords | Temporary) -> Route | NoRoute:
    return asyncio.run(find_route(domain, Answers(answer), 25, {}))


def test_issue_10_no_route_replies_read_as_before() -> None:
    null = route("null.test", MXRecords((MXRecord(0, ""),)))
    assert isinstance(null, NoRoute) and not null.is_nxdomain
    assert null.reply.to_line() == "556 5.1.10 null.test accepts no mail (null MX, RFC 7505)"
    gone = route("nosuch.test", NoRecords(is_nxdomain=True))
    assert isinstance(gone, NoRoute) and gone.is_nxdomain
    assert gone.reply.to_line() == "550 5.1.2 Domain nosuch.test does not exist"
    later = route("slow.test", Temporary("DNS timeout for slow.test MX"))
    assert isinstance(later, NoRoute) and later.reply.is_transient
    assert later.reply.to_line() == "451 4.4.3 DNS timeout for slow.test MX"
    # A U-label domain (SMTPUTF8) cannot break the reply: a reply is printable ASCII.
    utf8 = route("b\u00fccher.test", NoRecords(is_nxdomain=True))
    assert isinstance(utf8, NoRoute) and utf8.reply.to_line() == "550 5.1.2 Domain b?cher.test does not exist"


def test_mx_order_and_the_implicit_mx() -> None:
    records = MXRecords((MXRecord(20, "b.mx.test"), MXRecord(10, "a.mx.test")))
    assert route("x.test", records) == Route((Hop("a.mx.test", 25), Hop("b.mx.test", 25)))
    assert route("x.test", NoRecords(is_nxdomain=False)) == Route((Hop("x.test", 25),))
