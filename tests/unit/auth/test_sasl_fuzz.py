"""Hypothesis feeds the SASL cores (PLAIN, SCRAM-SHA-256) random and grammar-aware client messages: the
only allowed outcomes are a result or SASLError, and what the server sends back is well-formed."""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kartero.auth.sasl import SASLError, parse_plain
from tests.unit.auth.sasl_inputs import HypothesisChooser, RandomChooser, run_plain, run_sasl_input, run_scram

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDED = settings(max_examples=1000, deadline=None)


@FUZZ
@given(st.binary(max_size=400), st.binary(max_size=400))
def test_random_bytes_are_results_or_sasl_errors(first: bytes, final: bytes) -> None:
    with contextlib.suppress(SASLError):
        parse_plain(first)
    run_plain(first)
    run_scram([first, final])


@FUZZ
@given(st.data())
def test_grammar_aware_exchanges(data: st.DataObject) -> None:
    run_sasl_input(HypothesisChooser(data))


@SEEDED
@given(st.integers(0, 2**64))
def test_seeded_exchanges(seed: int) -> None:
    run_sasl_input(RandomChooser(random.Random(seed)))
