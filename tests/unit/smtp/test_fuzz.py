"""Hypothesis feeds the SMTP server core random and grammar-aware input: the only allowed outcome is
well-formed replies, with the core's buffer bounded, whatever arrives and however it is cut."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.auth.sasl_inputs import HypothesisChooser, RandomChooser
from tests.unit.smtp.fuzz_inputs import (
    MAX_SERVER_BUFFER,
    MX_SETTINGS,
    SUBMISSION_SETTINGS,
    check_smtp_replies,
    drive_server,
    parameter_session,
    run_server_input,
    smtp_session,
    split,
)

# Grammar-aware inputs drawn through hypothesis shrink to a small failing case but cost ~100 draws each;
# the seeded runs cover more inputs per second (a failure is reproduced from its seed).
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDED = settings(max_examples=400, deadline=None)


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=12), st.booleans(), st.integers(0, 2**32))
def test_random_bytes_only_produce_replies(chunks: list[bytes], submission: bool, seed: int) -> None:
    run = drive_server(chunks, settings=SUBMISSION_SETTINGS if submission else MX_SETTINGS, is_tls=submission,
                       seed=seed, defer_tls=False)  # fmt: skip
    check_smtp_replies(run.output)
    assert run.max_buffered <= MAX_SERVER_BUFFER


@FUZZ
@given(st.data())
def test_grammar_aware_sessions_only_produce_replies(data: st.DataObject) -> None:
    run_server_input(HypothesisChooser(data))


@FUZZ
@given(st.data(), st.booleans(), st.integers(0, 2**32))
def test_output_does_not_depend_on_how_the_input_is_cut(data: st.DataObject, submission: bool, seed: int) -> None:
    c = HypothesisChooser(data)
    session = smtp_session(c)
    kwargs = {"settings": SUBMISSION_SETTINGS if submission else MX_SETTINGS, "is_tls": submission, "seed": seed,
              "defer_tls": True}  # fmt: skip
    whole = drive_server([session], **kwargs)  # type: ignore[arg-type]
    cut = drive_server(split(c, session), **kwargs)  # type: ignore[arg-type]
    assert cut.output == whole.output
    assert cut.events == whole.events


@SEEDED
@given(st.integers(0, 2**64))
def test_seeded_sessions_only_produce_replies(seed: int) -> None:
    run_server_input(RandomChooser(random.Random(seed)))


@SEEDED
@given(st.integers(0, 2**64), st.booleans())
def test_seeded_parameters_only_produce_replies(seed: int, submission: bool) -> None:
    c = RandomChooser(random.Random(seed))
    run = drive_server([parameter_session(c)], settings=SUBMISSION_SETTINGS if submission else MX_SETTINGS,
                       is_tls=True, seed=seed, defer_tls=False)  # fmt: skip
    check_smtp_replies(run.output)
