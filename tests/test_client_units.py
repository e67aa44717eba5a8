"""client.py without a server: the error-code table, the pacer on a fake clock, paging."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import requests
from typing_extensions import override

from tap_marketo_activities.client import (
    ERROR_CODES,
    MARKETO_WINDOW_SECONDS,
    PACING_WINDOW_SECONDS,
    CallQuotaExhausted,
    ExportQuotaExhausted,
    FatalError,
    JobAlreadyQueued,
    MarketoClient,
    MarketoError,
    Pacer,
    QueueFull,
    RateLimited,
    RetriableError,
    TokenExpired,
    error_for,
    rule_for,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the error table ------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "message", "error"), [
    ("601", "Access token invalid", TokenExpired),
    ("602", "Access token expired", TokenExpired),
    ("603", "Access denied", FatalError),
    ("604", "Request time-out", RetriableError),
    ("606", "Max rate limit '100' exceeded with in '20' secs", RateLimited),
    ("607", "Daily quota reached", CallQuotaExhausted),
    ("608", "API Temporarily Unavailable", RetriableError),
    ("611", "System error", RetriableError),
    ("615", "Concurrent access limit '10' reached", RetriableError),
    ("713", "Transient Error", RetriableError),
    ("1029", "Export daily quota 500MB exceeded.", ExportQuotaExhausted),
    ("1029", "Job already queued", JobAlreadyQueued),
    ("1029", "Too many jobs in queue", QueueFull),
    ("609", "Invalid JSON", FatalError),
    ("999", "Something new", FatalError),
])
def test_each_code_raises_its_error(code: str, message: str, error: type[MarketoError]
                                    ) -> None:
    raised = error_for(code, message)
    assert type(raised) is error
    assert raised.code == code


def test_only_token_codes_forget_the_token_and_only_606_backs_off() -> None:
    forget = {code for code, rules in ERROR_CODES.items() if any(r.forget_token for r in rules)}
    back_off = {code for code, rules in ERROR_CODES.items()
                if any(r.back_off_window for r in rules)}
    assert forget == {"601", "602"}
    assert back_off == {"606"}
    assert not rule_for("999", "x").forget_token and not rule_for("999", "x").back_off_window


def test_messages_say_what_to_do() -> None:
    assert "Read-Only Activity" in str(error_for("603", "Access denied"))
    assert "midnight US Central" in str(error_for("607", "Daily quota reached"))
    assert "500MB exceeded" in str(error_for("1029", "Export daily quota 500MB exceeded."))
    assert str(error_for("604", "Request time-out")) == "Marketo error 604: Request time-out"


def answered(envelope: dict[str, Any], token: str = "tok") -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.request = requests.Request("GET", "http://marketo.test/rest/v1/x.json",
                                        headers={"Authorization": f"Bearer {token}"}).prepare()
    return response


def error_envelope(code: str, message: str = "m") -> dict[str, Any]:
    return {"requestId": "r", "success": False, "errors": [{"code": code, "message": message}]}


def client_with(clock: FakeClock) -> MarketoClient:
    client = MarketoClient("http://marketo.test", "id", "secret", timeout=(1.0, 1.0),
                           max_retry_seconds=0, pacer=Pacer(1.0, clock))
    client._token = "tok"
    return client


@pytest.mark.parametrize("code", ["601", "602"])
def test_a_token_code_forgets_the_token_it_was_sent_with(code: str) -> None:
    client = client_with(FakeClock())
    with pytest.raises(TokenExpired):
        client._check_envelope(error_envelope(code), answered({}, "tok"))
    assert client._token is None


def test_a_token_code_for_an_older_token_keeps_the_new_one() -> None:
    client = client_with(FakeClock())
    with pytest.raises(TokenExpired):
        client._check_envelope(error_envelope("601"), answered({}, "older"))
    assert client._token == "tok"


def test_606_makes_the_pacer_wait_out_the_window() -> None:
    clock = FakeClock()
    client = client_with(clock)
    assert client.pacer._wait_needed() == 0
    with pytest.raises(RateLimited):
        client._check_envelope(error_envelope("606"), answered({}))
    assert client.pacer._wait_needed() == pytest.approx(MARKETO_WINDOW_SECONDS)
    assert client._token == "tok"
    clock.now += MARKETO_WINDOW_SECONDS
    assert client.pacer._wait_needed() == 0


def test_other_codes_leave_token_and_pacer_alone() -> None:
    client = client_with(FakeClock())
    with pytest.raises(FatalError):
        client._check_envelope(error_envelope("603"), answered({}))
    assert client._token == "tok"
    assert client.pacer._wait_needed() == 0


def test_success_is_no_error() -> None:
    client = client_with(FakeClock())
    client._check_envelope({"success": True, "result": []}, answered({}))


# -- the pacer --------------------------------------------------------------------------------

def test_the_pacer_holds_calls_past_its_share_of_the_window() -> None:
    clock = FakeClock()
    pacer = Pacer(0.1, clock)  # 10 calls per window, 1 in flight
    assert (pacer.per_window, pacer.in_flight_limit) == (10, 1)
    for _ in range(10):
        with pacer.slot():
            pass
        clock.now += 1.0
    # The first call was 10 s ago: it leaves the window after PACING_WINDOW_SECONDS.
    assert pacer._wait_needed() == pytest.approx(PACING_WINDOW_SECONDS - 10.0 + 0.01)
    clock.now += PACING_WINDOW_SECONDS - 10.0
    assert pacer._wait_needed() == 0


def test_the_pacer_holds_calls_past_its_share_in_flight() -> None:
    pacer = Pacer(0.1, FakeClock())
    with pacer.slot():
        assert pacer._wait_needed() > 0
    assert pacer._wait_needed() == 0


def test_the_pacer_keeps_at_least_one_call() -> None:
    pacer = Pacer(0.001, FakeClock())
    assert (pacer.per_window, pacer.in_flight_limit) == (1, 1)


# -- paging -------------------------------------------------------------------------------

class Listing(MarketoClient):
    """A client whose GET answers pages from a script, and records what it was asked."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        super().__init__("http://marketo.test", "id", "secret", timeout=(1.0, 1.0),
                         max_retry_seconds=0, pacer=Pacer(1.0, FakeClock()))
        self.script = iter(pages)
        self.asked: list[dict[str, Any]] = []

    @override
    def get(self, path: str, params: Mapping[str, Any] | None = None, check: Any = None,
            before_each: Any = None) -> dict[str, Any]:
        self.asked.append(dict(params or {}))
        return next(self.script)


def test_a_listing_without_more_result_pages_while_pages_name_a_next() -> None:
    client = Listing([{"result": [1, 2], "nextPageToken": "a"}, {"result": [3]}])
    assert list(client.pages("/x.json", {"batchSize": 2})) == [1, 2, 3]
    assert client.asked == [{"batchSize": 2}, {"batchSize": 2, "nextPageToken": "a"}]


def test_a_listing_without_more_result_ends_at_an_empty_page() -> None:
    client = Listing([{"result": [], "nextPageToken": "a"}])
    assert list(client.pages("/x.json", {})) == []
    assert len(client.asked) == 1


def test_a_listing_with_more_result_goes_on_through_an_empty_page() -> None:
    client = Listing([{"result": [1], "nextPageToken": "a", "moreResult": True},
                      {"result": [], "nextPageToken": "b", "moreResult": True},
                      {"result": [2], "nextPageToken": "c", "moreResult": False}])
    assert list(client.pages("/x.json", {"nextPageToken": "start"})) == [1, 2]
    assert [a["nextPageToken"] for a in client.asked] == ["start", "a", "b"]
