"""Hypothesis plays a hostile remote MX against the SMTP client core (the delivery agent talks to servers
anyone can run): random and grammar-aware replies must end in events, never an exception, with the
buffer bounded and the outcome independent of how the replies were cut."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.auth.sasl_inputs import HypothesisChooser, RandomChooser
from tests.unit.smtp.fuzz_inputs import (
    MAX_CLIENT_BUFFER,
    drive_client,
    outgoing,
    run_client_input,
    server_script,
    split,
)

# Grammar-aware inputs drawn through hypothesis shrink to a small failing case but cost ~100 draws each;
# the seeded runs cover more inputs per second (a failure is reproduced from its seed).
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDED = settings(max_examples=600, deadline=None)


@FUZZ
@given(st.data(), st.lists(st.binary(max_size=300), max_size=12))
def test_random_bytes_end_in_events(data: st.DataObject, chunks: list[bytes]) -> None:
    c = HypothesisChooser(data)
    run = drive_client(chunks, [outgoing(c)], defer_tls=False)
    assert run.max_buffered <= MAX_CLIENT_BUFFER


@FUZZ
@given(st.data())
def test_grammar_aware_servers_end_in_events(data: st.DataObject) -> None:
    run_client_input(HypothesisChooser(data))


@FUZZ
@given(st.data())
def test_outcome_does_not_depend_on_how_replies_are_cut(data: st.DataObject) -> None:
    c = HypothesisChooser(data)
    script = server_script(c)
    messages = [outgoing(c) for _ in range(c.integer(0, 3))]
    whole = drive_client([script], messages, defer_tls=True)
    cut = drive_client(split(c, script), messages, defer_tls=True)
    assert cut.events == whole.events
    assert cut.output == whole.output


@SEEDED
@given(st.integers(0, 2**64))
def test_seeded_servers_end_in_events(seed: int) -> None:
    run_client_input(RandomChooser(random.Random(seed)))
