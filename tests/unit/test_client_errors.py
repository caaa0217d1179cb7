"""The client's exceptions survive pickling and copying, as process pools need."""

from __future__ import annotations

import copy
import pickle

import grpc
import pytest

import sessiond

ERRORS = [
    sessiond.TokenTheftDetectedError(
        "replayed",
        session_handle="h-1",
        user_id="u-1",
        code=grpc.StatusCode.UNAUTHENTICATED,
    ),
    sessiond.InvalidArgumentError("invalid user_id", field="user_id"),
    sessiond.ConflictError("conflict", current_version=7),
    sessiond.UnauthorisedError("gone"),
    sessiond.GeneralError("internal"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_error_pickle_round_trip(error: sessiond.SessionError) -> None:
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error)
    assert str(restored) == str(error)
    assert vars(restored) == vars(error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: type(error).__name__)
def test_error_copy_keeps_attributes(error: sessiond.SessionError) -> None:
    assert vars(copy.deepcopy(error)) == vars(error)
