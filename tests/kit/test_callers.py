"""The caller entries the gateway sets for upstream daemons, and how a daemon reads them."""

from __future__ import annotations

from kit.callers import LABELS_SCOPE, caller_metadata, caller_of


def test_gateway_entries_round_trip() -> None:
    metadata = (("x-request-id", "r1"), *caller_metadata("alice", {"ingest", LABELS_SCOPE}))
    caller = caller_of(metadata)
    assert caller.name == "alice" and caller.allows(LABELS_SCOPE) and caller.allows("ingest")
    assert not caller.allows("ingest.import")


def test_a_key_without_scopes_entry_allows_nothing() -> None:
    caller = caller_of((("x-carmesh-caller", "bob"),))
    assert caller.name == "bob" and not caller.allows("ingest") and not caller.allows(LABELS_SCOPE)


def test_a_call_that_did_not_come_through_the_gateway_is_anonymous() -> None:
    for metadata in (None, (), (("x-request-id", "r1"),)):
        caller = caller_of(metadata)
        assert caller.name == "anonymous" and caller.allows(LABELS_SCOPE)
    assert caller_of(caller_metadata("ops", {"*"})).allows("ingest.import")
