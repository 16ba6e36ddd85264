"""Hypothesis feeds the POP3 core random and grammar-aware input: the only allowed outcome is well-formed
responses, with the core's buffer bounded, whatever arrives and however it is cut."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.pop3.connection import MAX_PARTIAL_LINE
from tests.unit.auth.sasl_inputs import HypothesisChooser, RandomChooser
from tests.unit.pop3.fuzz_inputs import check_pop3_responses, drive_pop3, pop3_session, run_pop3_input
from tests.unit.smtp.fuzz_inputs import split

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDED = settings(max_examples=600, deadline=None)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans(), st.integers(0, 2**32))
def test_random_bytes_only_produce_responses(chunks: list[bytes], is_tls: bool, seed: int) -> None:
    run = drive_pop3(chunks, is_tls=is_tls, seed=seed, defer_tls=False)
    check_pop3_responses(run.output)
    assert run.max_buffered <= MAX_PARTIAL_LINE


@FUZZ
@given(st.data())
def test_grammar_aware_sessions_only_produce_responses(data: st.DataObject) -> None:
    run_pop3_input(HypothesisChooser(data))


@SEEDED
@given(st.integers(0, 2**64))
def test_seeded_sessions_only_produce_responses(seed: int) -> None:
    run_pop3_input(RandomChooser(random.Random(seed)))


@FUZZ
@given(st.data(), st.booleans(), st.integers(0, 2**32))
def test_output_does_not_depend_on_how_the_input_is_cut(data: st.DataObject, is_tls: bool, seed: int) -> None:
    c = HypothesisChooser(data)
    session = pop3_session(c)
    whole = drive_pop3([session], is_tls=is_tls, seed=seed, defer_tls=True)
    cut = drive_pop3(split(c, session), is_tls=is_tls, seed=seed, defer_tls=True)
    assert cut.output == whole.output
    assert cut.events == whole.events
