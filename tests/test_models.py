"""The queue payload: version 1 with and without the optional request id."""

from __future__ import annotations

import uuid

import pytest

from exporter.errors import ExportFailed
from exporter.models import ExportMessageV1


def test_message_round_trips_with_its_request_id() -> None:
    message = ExportMessageV1(str(uuid.uuid4()), "u-1", request_id="req-1")
    payload = message.to_payload()
    assert payload["v"] == 1 and payload["request_id"] == "req-1"
    assert ExportMessageV1.from_payload(payload) == message


def test_message_from_an_older_api_without_request_id_still_parses() -> None:
    export_id = str(uuid.uuid4())
    old = {"v": 1, "export_id": export_id, "user_id": "u-1"}
    message = ExportMessageV1.from_payload(old)
    assert message.request_id is None
    assert message.to_payload() == old  # and nothing new is written when there is none


@pytest.mark.parametrize("bad", [7, "", "x" * 129, "a\nb"])
def test_a_bad_request_id_is_dropped_not_fatal(bad: object) -> None:
    payload = {"v": 1, "export_id": str(uuid.uuid4()), "user_id": "u-1", "request_id": bad}
    assert ExportMessageV1.from_payload(payload).request_id is None


def test_the_version_stays_strict() -> None:
    with pytest.raises(ExportFailed):
        ExportMessageV1.from_payload({"v": 2, "export_id": str(uuid.uuid4()), "user_id": "u"})
