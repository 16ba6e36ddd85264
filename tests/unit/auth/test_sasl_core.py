"""Issue 8, finding 10 for the SASL core: SCRAM client messages that used to pass malformed."""

from __future__ import annotations

import pytest

from kartero.auth.sasl import SASLError, ScramServer
from tests.unit.auth.sasl_inputs import SCRAM


@pytest.mark.parametrize(
    "message",
    [
        b"n,,n=,r=abc",  # an empty user name: SMTP then read the client-final as a new client-first
        b"n,,n=bob,r=a\0b",  # the nonce is echoed in server-first: printable ASCII only
        b"n,,n=bob,r=\xc3\xa9",
        b"n,,n=bob,r=",
        b"n,,n=b=2ob,r=abc",  # "=" must start =2C or =3D
        b"n,,n=bob=,r=abc",
        b"n,x=bob,n=bob,r=abc",  # an authzid is "a=" saslname
        b"n,,n=b\xffob,r=abc",  # not UTF-8 (was decoded with replacement characters)
    ],
)
def test_issue_8_malformed_client_first_is_refused(message: bytes) -> None:
    with pytest.raises(SASLError):
        ScramServer("srvnonce").client_first(message)


def test_escaped_names_and_authzid() -> None:
    server = ScramServer("srvnonce")
    assert server.client_first(b"n,a=a=2Cb=3Dc,n=a=2Cb=3Dc,r=abc") == "a,b=c"
    assert server.server_first(SCRAM).startswith(b"r=abcsrvnonce,s=")
