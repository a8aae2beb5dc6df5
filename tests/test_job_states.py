"""The job states the backend names and the ones storage records are one set."""

from __future__ import annotations

from backend.models import JobState
from storage.repos.jobs import FINAL_JOB_STATES, JOB_STATES


def test_storage_knows_exactly_the_backends_job_states() -> None:
    """Storage's state strings are JobState's values, none missing and none extra."""
    assert set(JOB_STATES) == {state.value for state in JobState}
    assert len(JOB_STATES) == len(set(JOB_STATES))


def test_storage_final_states_are_the_backends_final_states() -> None:
    """A state is final in storage exactly when JobState.is_final says so."""
    assert {state.value for state in JobState if state.is_final} == FINAL_JOB_STATES
