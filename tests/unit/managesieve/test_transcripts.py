"""The ManageSieve core fed byte transcripts (RFC 5804): every command, its errors and response codes,
literals both ways, the login rules; each transcript is also fed one byte at a time."""

from __future__ import annotations

import base64
import hashlib
import hmac

from kartero.managesieve.connection import (
    OUTPUT_HIGH_WATER,
    CheckRequested,
    ManageSieveSettings,
    Outcome,
    OutputReady,
    PutScript,
    ScriptsWanted,
)
from tests.unit.managesieve.harness import (
    GREETING_PLAIN,
    PASSWORD,
    SCRAM_KEYS,
    SETTINGS,
    Peer,
    logged_in,
    run_transcript,
)

AUTH = 'C: AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="\nS: OK "Logged in"'


def test_greeting_is_the_capability_list() -> None:
    assert Peer(is_loopback=False).greeting == GREETING_PLAIN
    assert Peer().greeting == GREETING_PLAIN.replace(b'"SASL" ""', b'"SASL" "PLAIN SCRAM-SHA-256"')
    assert Peer(is_tls=True, is_loopback=False).greeting == GREETING_PLAIN.replace(
        b'"SASL" ""', b'"SASL" "PLAIN SCRAM-SHA-256"'
    ).replace(b'"STARTTLS"\r\n', b"")


def test_capability_after_login_names_the_owner_and_no_mechanisms() -> None:
    run_transcript(f"""
        {AUTH}
        C: capability
        S: "IMPLEMENTATION" "Kartero"
        S: "SASL" ""
        S: "SIEVE" "fileinto vacation"
        S: "MAXREDIRECTS" "5"
        S: "UNAUTHENTICATE"
        S: "OWNER" "bob@example.test"
        S: "VERSION" "1.0"
        S: OK "Capability completed"
    """)


def test_plaintext_login_refused_off_loopback_until_starttls() -> None:
    peer = Peer(is_loopback=False)
    login = b'AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="\r\n'
    assert peer.send(login) == b'NO (ENCRYPT-NEEDED) "Use STARTTLS first"\r\n'
    assert peer.send(b"STARTTLS\r\n") == b'OK "Begin TLS negotiation"\r\n' + GREETING_PLAIN.replace(
        b'"SASL" ""', b'"SASL" "PLAIN SCRAM-SHA-256"'
    ).replace(b'"STARTTLS"\r\n', b"").replace(b"Kartero ManageSieve ready", b"TLS negotiation successful")
    assert peer.send(b"STARTTLS\r\n") == b'NO "TLS already active"\r\n'
    assert peer.send(login) == b'OK "Logged in"\r\n'


def test_issue_12_input_pipelined_behind_starttls_is_dropped() -> None:
    peer = Peer(is_loopback=False)
    peer.conn.receive_data(b'STARTTLS\r\nAUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="\r\n')
    assert peer.conn.next_event() is not None  # StartTLSRequested: what followed in clear is gone
    peer.conn.receive_data(b"LISTSCRIPTS\r\n")
    peer.conn.tls_established()
    assert peer.conn.next_event() is None
    assert peer.conn.data_to_send().endswith(b'OK "TLS negotiation successful"\r\n')
    assert peer.conn.user is None


def test_authenticate_plain_with_continuation_literal_and_failures() -> None:
    run_transcript("""
        C: AUTHENTICATE "PLAIN"
        S: ""
        C: {28+}
        C: AGJvYkBleGFtcGxlLnRlc3QAcHc=
        S: OK "Logged in"
        C: UNAUTHENTICATE
        S: OK "Unauthenticate completed"
        C: LISTSCRIPTS
        S: NO "Authenticate first"
        C: AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAeHg="
        S: NO "Authentication failed"
        C: AUTHENTICATE "PLAIN"
        S: ""
        C: "*"
        S: NO "Authentication cancelled"
        C: AUTHENTICATE "PLAIN" "!!"
        S: NO "Bad SASL response: invalid base64"
        C: AUTHENTICATE "PLAIN"
        S: ""
        C: LOGOUT
        S: NO "Expected a string"
        C: AUTHENTICATE "LOGIN" ""
        S: NO "Unsupported mechanism"
        C: AUTHENTICATE "PLAIN" "YQBiAHB3"
        S: NO "Authorization identity not allowed"
    """)


def test_authenticate_plain_with_synchronizing_literal_in_the_command() -> None:
    run_transcript("""
        C: AUTHENTICATE "PLAIN" {28}
        C: AGJvYkBleGFtcGxlLnRlc3QAcHc=
        S: OK "Logged in"
        C: AUTHENTICATE "PLAIN" ""
        S: NO "Already authenticated"
    """)


def _scram_client(server_first: bytes, client_first_bare: str, password: str) -> tuple[bytes, bytes]:
    """The client-final message and the server signature a right password gives."""
    attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    final = f"{without_proof},p={base64.b64encode(proof).decode()}".encode()
    return final, b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())


def test_authenticate_scram_sends_server_final_in_the_ok() -> None:
    bare = "n=bob@example.test,r=CLIENTNONCE"
    server_first = f"r=CLIENTNONCESERVERNONCE,s={base64.b64encode(SCRAM_KEYS.salt).decode()},i=4096".encode()
    final, verifier = _scram_client(server_first, bare, PASSWORD)
    b64 = base64.b64encode
    run_transcript(f"""
        C: AUTHENTICATE "SCRAM-SHA-256" "{b64(("n,," + bare).encode()).decode()}"
        S: "{b64(server_first).decode()}"
        C: "{b64(final).decode()}"
        S: OK (SASL "{b64(verifier).decode()}") "Logged in"
    """)
    wrong, _ = _scram_client(server_first, bare, "not it")
    run_transcript(f"""
        C: AUTHENTICATE "SCRAM-SHA-256"
        S: ""
        C: "{b64(("n,," + bare).encode()).decode()}"
        S: "{b64(server_first).decode()}"
        C: "{b64(wrong).decode()}"
        S: NO "Authentication failed"
        C: AUTHENTICATE "SCRAM-SHA-256" "{b64(("n,," + bare).encode()).decode()}"
        S: "{b64(server_first).decode()}"
        C: "*"
        S: NO "Authentication cancelled"
    """)


def test_putscript_getscript_listscripts_with_literals() -> None:
    run_transcript(f"""
        {AUTH}
        C: PUTSCRIPT "rules" {{7+}}
        C: keep;
        C:
        S: OK "Putscript completed"
        C: PUTSCRIPT "b\\"q" "discard;"
        S: OK "Putscript completed"
        C: LISTSCRIPTS
        S: "b\\"q"
        S: "rules"
        S: OK "Listscripts completed"
        C: GETSCRIPT "rules"
        S: {{7}}
        S: keep;
        S:
        S: OK "Getscript completed"
        C: GETSCRIPT "none"
        S: NO (NONEXISTENT) "No such script"
    """)


def test_putscript_syntax_error_gives_line_and_column() -> None:
    peer = run_transcript(f"""
        {AUTH}
        C: PUTSCRIPT "bad" {{15+}}
        C: keep;
        C:   error;\\
        C:
        S: NO "2:3: unknown command"
        C: CHECKSCRIPT "error"
        S: NO "1:1: unknown command"
        C: CHECKSCRIPT {{5+}}
        C: keep;
        S: OK "Script is valid"
    """)
    assert peer.scripts == {}
    assert peer.send(b'PUTSCRIPT "latin" {1+}\r\n\xff\r\n') == b'NO "Script is not UTF-8"\r\n'
    assert peer.scripts == {}


def test_setactive_deletescript_renamescript_codes() -> None:
    run_transcript(f"""
        {AUTH}
        C: PUTSCRIPT "a" "keep;"
        S: OK "Putscript completed"
        C: SETACTIVE "a"
        S: OK "Setactive completed"
        C: SETACTIVE "zz"
        S: NO (NONEXISTENT) "No such script"
        C: DELETESCRIPT "a"
        S: NO (ACTIVE) "The active script cannot be deleted"
        C: PUTSCRIPT "b" "keep;"
        S: OK "Putscript completed"
        C: RENAMESCRIPT "a" "b"
        S: NO (ALREADYEXISTS) "A script of that name exists"
        C: RENAMESCRIPT "x" "y"
        S: NO (NONEXISTENT) "No such script"
        C: RENAMESCRIPT "a" "c"
        S: OK "Renamescript completed"
        C: LISTSCRIPTS
        S: "b"
        S: "c" ACTIVE
        S: OK "Listscripts completed"
        C: SETACTIVE ""
        S: OK "Setactive completed"
        C: DELETESCRIPT "c"
        S: OK "Deletescript completed"
        C: DELETESCRIPT "c"
        S: NO (NONEXISTENT) "No such script"
    """)


def test_quota_codes_for_size_and_count() -> None:
    run_transcript(f"""
        {AUTH}
        C: HAVESPACE "a" 100
        S: OK "Putscript would succeed"
        C: HAVESPACE "a" 101
        S: NO (QUOTA/MAXSIZE) "Scripts may have at most 100 octets"
        C: HAVESPACE "a" 4294967296
        S: NO "Syntax: HAVESPACE name size"
        C: PUTSCRIPT "a" "keep;"
        S: OK "Putscript completed"
        C: PUTSCRIPT "b" "keep;"
        S: OK "Putscript completed"
        C: PUTSCRIPT "c" "keep;"
        S: OK "Putscript completed"
        C: HAVESPACE "d" 10
        S: NO (QUOTA/MAXSCRIPTS) "Too many scripts"
        C: HAVESPACE "c" 10
        S: OK "Putscript would succeed"
        C: PUTSCRIPT "d" "keep;"
        S: NO (QUOTA/MAXSCRIPTS) "Too many scripts"
    """)


def test_issue_12_oversized_script_literal_refused_before_it_is_read() -> None:
    peer = logged_in()
    assert peer.send(b'PUTSCRIPT "big" {101+}\r\n') == b""
    assert peer.conn.buffered_bytes == 0
    # Its octets are counted off as they come, never kept; then the command ends and gets its NO.
    for _ in range(10):
        assert peer.send(b"x" * 10) == b""
        assert peer.conn.buffered_bytes == 0 and len(peer.conn._literal) == 0
    assert peer.send(b"x\r\nNOOP\r\n") == b'NO (QUOTA/MAXSIZE) "Script is too big"\r\nOK "Done"\r\n'
    assert peer.scripts == {}


def test_issue_12_a_refused_command_is_read_to_its_end_literals_included() -> None:
    run_transcript(f"""
        {AUTH}
        C: PUTSCRIPT a{{b {{3+}}
        C: "x"
        S: NO "Invalid characters in command"
        C: GETSCRIPT {{20000+}}
        C: {"y" * 20000}\\
        C:  "more" {{2+}}
        C: {{}}
        S: NO "String too long"
        C: NOOP "T1"
        S: OK (TAG "T1") "Done"
    """)


def test_names_must_be_net_unicode() -> None:
    long_name = "a" * 513
    run_transcript(f"""
        {AUTH}
        C: PUTSCRIPT "a\tb" "keep;"
        S: NO "Invalid script name (1 to 512 octets of UTF-8, no controls, NFC)"
        C: GETSCRIPT "{long_name}"
        S: NO "Invalid script name (1 to 512 octets of UTF-8, no controls, NFC)"
        C: GETSCRIPT "e\u0301"
        S: NO "Invalid script name (1 to 512 octets of UTF-8, no controls, NFC)"
        C: PUTSCRIPT "Urlaub \u00e9" "keep;"
        S: OK "Putscript completed"
        C: LISTSCRIPTS
        S: "Urlaub \u00e9"
        S: OK "Listscripts completed"
        C: DELETESCRIPT ""
        S: NO "Invalid script name (1 to 512 octets of UTF-8, no controls, NFC)"
    """)


def test_syntax_errors_and_unknown_commands() -> None:
    run_transcript(f"""
        C: FROB
        S: NO "Unknown command"
        C: "CAPABILITY"
        S: NO "Expected a command"
        C: NOOP "unterminated
        S: NO "Unterminated quoted string"
        C: NOOP "a\\x"
        S: NO "Invalid escape in quoted string"
        C: NOOP "a"b
        S: NO "Expected a space after a string"
        C: NOOP a
        S: NO "Syntax: NOOP [tag]"
        C: NOOP "a" "b"
        S: NO "Syntax: NOOP [tag]"
        C: NOOP
        S: OK "Done"
        {AUTH}
        C: PUTSCRIPT "a"
        S: NO "Syntax: PUTSCRIPT name script"
        C: RENAMESCRIPT "a" "b" "c" "d" "e" "f" "g" "h" "i"
        S: NO "Too many arguments"
        C: STARTTLS
        S: NO "Already authenticated"
    """)


def test_issue_12_overlong_line_is_dropped_as_it_arrives() -> None:
    peer = Peer()
    for _ in range(100):
        peer.send(b"A" * 1000)
        assert peer.conn.buffered_bytes <= 9 * 1024
    assert peer.send(b"\r\nNOOP\r\n") == b'NO "Line too long"\r\nOK "Done"\r\n'


def test_too_many_errors_end_the_session() -> None:
    peer = Peer(settings=ManageSieveSettings(max_errors=2))
    out = peer.send(b"X\r\nY\r\nNOOP\r\n")
    assert out == b'NO "Unknown command"\r\nNO "Unknown command"\r\nBYE "Too many errors"\r\n'
    assert peer.conn.is_closed


def test_logout_ignores_what_follows() -> None:
    peer = Peer()
    assert peer.send(b"LOGOUT\r\nNOOP\r\n") == b'OK "Logout completed"\r\n'
    assert peer.conn.is_closed


def test_store_unavailable_is_trylater() -> None:
    run_transcript("""
        C: AUTHENTICATE "PLAIN" "AGJvYkBleGFtcGxlLnRlc3QAcHc="
        S: NO (TRYLATER) "Mail store unavailable, try again later"
    """, unavailable=True)
    peer = logged_in()
    peer.unavailable = True
    assert peer.send(b"LISTSCRIPTS\r\n") == b'NO (TRYLATER) "Mail store unavailable, try again later"\r\n'
    assert peer.send(b'PUTSCRIPT "a" "keep;"\r\n') == b'NO (TRYLATER) "Mail store unavailable, try again later"\r\n'


def test_long_error_text_goes_out_as_a_literal() -> None:
    peer = logged_in()
    peer.checker = lambda text: "1:1: " + "x" * 2000
    assert peer.send(b'CHECKSCRIPT "keep;"\r\n') == b"NO {2005}\r\n1:1: " + b"x" * 2000 + b"\r\n"


def test_commands_wait_for_the_store() -> None:
    peer = logged_in()
    peer.conn.receive_data(b"LISTSCRIPTS\r\nNOOP\r\n")
    assert isinstance(peer.conn.next_event(), ScriptsWanted)
    assert peer.conn.next_event() is None  # NOOP waits for the answer
    peer.conn.scripts_result([])
    assert peer.conn.next_event() is None
    assert peer.conn.data_to_send() == b'OK "Listscripts completed"\r\nOK "Done"\r\n'


def test_settings_refuse_nonsense() -> None:
    for bad in ({"max_script_size": 0}, {"max_scripts": 0}, {"max_errors": 0}):
        try:
            ManageSieveSettings(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(bad)
    assert SETTINGS.max_script_size == 100


def test_issue_12_pipelined_getscripts_wait_for_the_client_to_read() -> None:
    peer = logged_in(scripts={"big": "#" * 90})
    peer.conn.receive_data(b'GETSCRIPT "big"\r\n' * 2000)
    events = []
    while (event := peer.conn.next_event()) is not None:
        events.append(event)
        if isinstance(event, OutputReady):
            break
        peer.answer(event)
    assert isinstance(events[-1], OutputReady)
    held = peer.conn.data_to_send()
    assert OUTPUT_HIGH_WATER <= len(held) < OUTPUT_HIGH_WATER + 200


def test_issue_12_scripts_are_compiled_by_the_adapter_not_in_the_core() -> None:
    """A hostile 1 MiB script takes the compiler about a second: the core asks for it as an event, so the
    adapter runs it in a worker thread instead of on the event loop."""
    peer = logged_in()
    peer.conn.receive_data(b'PUTSCRIPT "a" "keep;"\r\nNOOP\r\n')
    assert peer.conn.next_event() == CheckRequested("keep;")
    assert peer.conn.next_event() is None  # nothing else while the check runs
    peer.conn.check_result(None)
    assert peer.conn.next_event() == PutScript("a", "keep;", 3)
    peer.conn.store_result(Outcome.OK)
    assert peer.conn.next_event() is None
    assert peer.conn.data_to_send() == b'OK "Putscript completed"\r\nOK "Done"\r\n'
