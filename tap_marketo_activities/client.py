"""Marketo HTTP: authentication, the response envelope, error codes, pacing and retries.

This module knows nothing of Singer. Every Marketo error code is mapped in `ERROR_CODES`,
and every retry goes through the one policy in `MarketoClient._with_retries`.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

import backoff
import requests
from typing_extensions import override
from urllib3.exceptions import NewConnectionError

logger = logging.getLogger(__name__)
T = TypeVar("T")
EXCERPT_CHARS = 100  # of an odd answer, in the one line that reports it

TOKEN_MARGIN_SECONDS = 120  # refresh this long before Marketo says the token expires
MARKETO_CALLS_PER_WINDOW = 100
MARKETO_WINDOW_SECONDS = 20.0
# Our clock starts before the request leaves, Marketo's when it arrives: pace over a
# slightly longer window so that the two never disagree about the 100th call.
PACING_WINDOW_SECONDS = MARKETO_WINDOW_SECONDS + 1.0
MARKETO_CONCURRENT_CALLS = 10
QUICK_TIMEOUT = (3.0, 5.0)


class MarketoError(Exception):
    """A Marketo call failed. `str()` is one line meant for the person reading the log."""

    code: str | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class RetriableError(MarketoError):
    """Transient: the same call may succeed later (5xx, 604/608/611/713/615, resets)."""


class RateLimited(RetriableError):
    """606: the rolling 20-second window is full."""


class TokenExpired(RetriableError):
    """601/602: get a new token and try again."""


class FatalError(MarketoError):
    """Retrying will not help: configuration, permissions, or a bug."""


class CredentialsRefused(FatalError):
    pass


class QuotaExhausted(MarketoError):
    """A daily quota is used up: stop cleanly and resume after midnight US Central."""


class CallQuotaExhausted(QuotaExhausted):
    """607: the instance's daily API calls are used up (every integration's)."""


class ExportQuotaExhausted(QuotaExhausted):
    """The day's bulk export quota is used up: Marketo's 500 MB, or this tap's own cap."""


class QueueFull(MarketoError):
    """1029 "Too many jobs in queue": the instance's export queue has no room now."""


class JobAlreadyQueued(MarketoError):
    """1029 "Job already queued": the enqueue we are retrying did happen."""


class Stopped(MarketoError):
    """The sync is stopping (a signal, or a fatal error elsewhere): no more retries."""


class FileNotReady(MarketoError):
    """HTTP 404 on file.json: not ready yet, or gone after the retention period."""


class PastTheEnd(FatalError):
    """HTTP 416 on a Range request for file.json: nothing from that byte on. `total` is
    the file's length from `Content-Range: bytes */<total>`, None when it is not given."""

    def __init__(self, message: str, total: int | None) -> None:
        super().__init__(message)
        self.total = total


class OddAnswer(RetriableError):
    """Marketo answered something that is not what the call returns (not the envelope, an
    empty or null result, a list where an object belongs, an unknown status, a web page
    instead of a file): Marketo's trouble, retried like any transient error."""


class StillOdd(FatalError):
    """An answer still odd after its retries; `what`: the odd answer's own line."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


def excerpt(text: str | bytes, limit: int = EXCERPT_CHARS) -> str:
    """The start of what came back, on one line, for the person reading the log."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


QUOTA_RESETS = ("It resets at midnight US Central time; run the tap again after that and it "
                "resumes from its state.")


@dataclass(frozen=True)
class CodeRule:
    """What one Marketo error code means: the exception raised, and what happens besides."""

    error: type[MarketoError]
    line: str = "{text}"  # the raised message: {text} is "Marketo error CODE: message"
    forget_token: bool = False  # the token is dead: the retry signs in again
    back_off_window: bool = False  # someone used the 20 s window: the pacer waits it out
    when: str = ""  # only when Marketo's message holds this (lower case)


# Every Marketo error code the tap tells apart; any other code is fatal. A code with
# several rules is told apart by its message, first match wins.
ERROR_CODES: dict[str, tuple[CodeRule, ...]] = {
    "601": (CodeRule(TokenExpired, forget_token=True),),  # access token invalid
    "602": (CodeRule(TokenExpired, forget_token=True),),  # access token expired
    "603": (CodeRule(FatalError, "{text}. The API user lacks a permission: it needs "
                     "'Read-Only Activity' (or 'Read-Write Activity'), and the instance's IP "
                     "allow-list must admit this host."),),
    "604": (CodeRule(RetriableError),),  # request timed out
    "606": (CodeRule(RateLimited, back_off_window=True),),  # 100 calls per 20 s passed
    "607": (CodeRule(CallQuotaExhausted, "Marketo's daily API call quota (607) is used up. "
                     + QUOTA_RESETS),),
    "608": (CodeRule(RetriableError),),  # API temporarily unavailable
    "611": (CodeRule(RetriableError),),  # system error
    "615": (CodeRule(RetriableError),),  # concurrent access limit reached
    "713": (CodeRule(RetriableError),),  # transient error
    "1029": (
        CodeRule(ExportQuotaExhausted, "Marketo's daily bulk export quota is used up ({message}). "
                 + QUOTA_RESETS, when="quota"),
        CodeRule(JobAlreadyQueued, when="already queued"),  # our retried enqueue did happen
        CodeRule(QueueFull),  # too many jobs in queue
    ),
}
UNKNOWN_CODE = CodeRule(FatalError)


def rule_for(code: str, message: str) -> CodeRule:
    lowered = message.lower()
    return next((rule for rule in ERROR_CODES.get(code, ()) if rule.when in lowered),
                UNKNOWN_CODE)


def error_for(code: str, message: str, rule: CodeRule | None = None) -> MarketoError:
    """The exception for an error code (`rule`: the one `rule_for` found)."""
    rule = rule or rule_for(code, message)
    text = f"Marketo error {code}: {message}"
    return rule.error(rule.line.format(text=text, message=message), code)


class Pacer:
    """Keeps this process under a share of Marketo's call limits, which other tools of the
    same instance also use: calls per rolling 20 s, and calls in flight."""

    def __init__(self, share: float, clock: Any = time.monotonic) -> None:
        self.per_window = max(1, int(MARKETO_CALLS_PER_WINDOW * share))
        self.in_flight_limit = max(1, int(MARKETO_CONCURRENT_CALLS * share))
        self._clock = clock
        self._sent: collections.deque[float] = collections.deque()
        self._in_flight = 0
        self._blocked_until = 0.0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while (wait := self._wait_needed()) > 0:
                self._cond.wait(timeout=wait)
            self._in_flight += 1
            self._sent.append(self._clock())
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _wait_needed(self) -> float:
        now = self._clock()
        while self._sent and now - self._sent[0] >= PACING_WINDOW_SECONDS:
            self._sent.popleft()
        if now < self._blocked_until:
            return self._blocked_until - now
        if len(self._sent) >= self.per_window:
            return PACING_WINDOW_SECONDS - (now - self._sent[0]) + 0.01
        if self._in_flight >= self.in_flight_limit:
            return 0.5
        return 0.0

    def back_off_window(self) -> None:
        """After a 606 someone else used the window: wait it out before the next call."""
        with self._cond:
            self._blocked_until = self._clock() + MARKETO_WINDOW_SECONDS
            logger.info("Rate limit reached (606): waiting %.0f s for Marketo's 20-second "
                        "window to clear.", MARKETO_WINDOW_SECONDS)


class Redactor:
    """Removes the client secret and access tokens from any text that may reach a log."""

    def __init__(self, *secrets: str) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        # As is, and as it looks inside a URL's query string.
        for form in (secret, quote_plus(secret), quote(secret, safe="")):
            if form and form not in self._secrets:
                self._secrets.append(form)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


SECRET_IN_QUERY = re.compile(r"((?:client_secret|access_token)=)[^&\s\"']*", re.IGNORECASE)


class QuerySecretFilter(logging.Filter):
    """Blanks client_secret and access_token in query strings of log records. urllib3
    logs every request line at DEBUG, the identity call's with the secret, and a user's
    logging config may turn that on: a filter on the logger itself applies whatever
    handlers and levels that config sets."""

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if SECRET_IN_QUERY.search(text):
            record.msg, record.args = SECRET_IN_QUERY.sub(r"\1***", text), ()
        return True


URLLIB3_LOGGERS = ("urllib3", "urllib3.connectionpool", "urllib3.connection",
                   "urllib3.poolmanager", "urllib3.response", "urllib3.util.retry")


def guard_urllib3_logs() -> None:
    """Logger filters do not apply to records of child loggers: each one gets its own."""
    for name in URLLIB3_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, QuerySecretFilter) for f in log.filters):
            log.addFilter(QuerySecretFilter())


def _log_retry(details: Mapping[str, Any]) -> None:
    error = details.get("exception")
    method, path = details["args"][:2]
    logger.warning("Retrying %s %s in %.1f s (attempt %d): %s", method, path,
                   details.get("wait", 0.0), details["tries"], error)


class MarketoClient:
    """Marketo REST and Bulk calls with the token, pacing and retry policy applied."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: tuple[float, float],
        max_retry_seconds: float,
        pacer: Pacer,
    ) -> None:
        guard_urllib3_logs()  # here, not at import: after the user's logging config is set
        self.base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._client_secret = client_secret
        self.timeout = timeout
        self.max_retry_seconds = max_retry_seconds
        self.pacer = pacer
        self.redact = Redactor(client_secret)
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._token_lock = threading.Lock()
        self._local = threading.local()
        self.calls = 0
        self.api_user: str | None = None  # the token's `scope`: Get Daily Usage's userId
        self.reached = False  # Marketo has answered once: a dead endpoint is ruled out
        self.stopping = threading.Event()  # set: give up retrying, the sync is ending

    @property
    def session(self) -> requests.Session:
        # One session per thread: requests does not promise a shared one is thread-safe.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    # -- authentication -----------------------------------------------------------------

    def token(self) -> str:
        with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_expires_at:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _forget_token(self, stale: str) -> None:
        with self._token_lock:
            if self._token == stale:
                self._token = None

    def _fetch_token(self) -> None:
        params = {"grant_type": "client_credentials", "client_id": self._client_id,
                  "client_secret": self._client_secret}
        try:
            # The query carries the secret: a redirect must never take it elsewhere.
            response = self.session.get(f"{self.base_url}/identity/oauth/token", params=params,
                                        timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            self._unreachable(exc)
            raise RetriableError(self.redact(f"Identity call failed: {exc}")) from None
        self.reached = True
        self._refuse_redirect(response, "The identity call")
        if response.status_code in (400, 401, 403):
            raise CredentialsRefused(
                f"Marketo refused the credentials (HTTP {response.status_code} from "
                f"{self.base_url}/identity). Check client_id and client_secret in Admin > "
                "LaunchPoint > View Details of the API service."
            )
        if response.status_code >= 500:
            raise RetriableError(f"Identity call answered HTTP {response.status_code}")
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
            if not isinstance(token, str) or not token:
                raise ValueError(token)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FatalError(
                f"The identity endpoint at {self.base_url} did not answer like Marketo "
                f"(HTTP {response.status_code}: {self.redact(excerpt(response.content))}). "
                "Is base_url your REST endpoint?"
            ) from None
        self.redact.add(token)
        scope = body.get("scope")
        self.api_user = scope if isinstance(scope, str) and scope else None
        margin = min(TOKEN_MARGIN_SECONDS, expires_in / 4)
        self._token = token
        self._token_expires_at = time.monotonic() + max(0.0, expires_in - margin)

    def _unreachable(self, exc: requests.RequestException) -> None:
        """Before Marketo has ever answered, a refused connection, an unknown host or a TLS
        failure is a wrong base_url (or network), not trouble worth minutes of retries."""
        if self.reached:
            return
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        if isinstance(exc, requests.exceptions.SSLError):
            what = "the TLS handshake failed"
        elif isinstance(reason, NewConnectionError):
            cause = str(reason)
            what = ("the host name is unknown" if "resolve" in cause.lower() or
                    "name" in type(reason).__name__.lower() else "the connection was refused")
        else:
            return
        raise FatalError(
            f"Cannot reach base_url {self.base_url}: {what}. Check base_url (Admin > Web "
            "Services > REST API endpoint), and this host's DNS, proxy and network."
        ) from None

    def _refuse_redirect(self, response: requests.Response, call: str) -> None:
        if not response.is_redirect:
            return
        response.close()
        host = urlsplit(response.headers.get("Location", "")).netloc or "another address"
        raise FatalError(
            f"{call} was redirected to {self.redact(excerpt(host))}; base_url must be the "
            f"instance's own endpoint (Admin > Web Services), not {self.base_url}."
        )

    # -- calls --------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None,
            check: Callable[[Any], str | None] | None = None,
            before_each: Callable[[], None] | None = None) -> dict[str, Any]:
        """The envelope of a GET; `check(result)` names what is wrong with its result, if
        anything (then the answer is odd, and retried). `before_each()` runs before every
        attempt, retries included (a call budget: what it raises ends the call)."""
        return self._send("GET", path, params=params, check=check, before_each=before_each)

    def read(self, path: str, params: Mapping[str, Any], parse: Callable[[dict[str, Any]], T],
             *, before_each: Callable[[], None] | None = None,
             odd_tries: int | None = None) -> T:
        """What `parse` makes of a GET's envelope. A ValueError from `parse` names what is odd
        in the answer: retried like any odd answer, at most `odd_tries` times in all when
        given (then StillOdd), so that a read stops within a few calls of an odd answer."""
        def once(method: str, call_path: str) -> T:
            envelope = self._send_once(method, call_path, params, None, None, None,
                                       before_each)
            try:
                return parse(envelope)
            except ValueError as exc:
                raise OddAnswer(f"{method} {call_path} answered {exc}") from None
        return self._with_retries(once, "GET", path, odd_tries=odd_tries)

    def pages(self, path: str, params: Mapping[str, Any],
              check: Callable[[Any], str | None] | None = None) -> Iterator[Any]:
        """Every item of a listing paged by `nextPageToken`, page after page. A listing
        that says `moreResult` goes on while it is true (a page may be empty); one that
        does not, while pages are not empty and name a next page."""
        while True:
            envelope = self.get(path, params, check)
            result = envelope.get("result") or []
            yield from result
            token, more = envelope.get("nextPageToken"), envelope.get("moreResult")
            if not token or more is False or (more is None and not result):
                return
            params = {**params, "nextPageToken": token}

    def result(self, method: str, path: str, body: Any = None, *, once: bool = False,
               check: Callable[[dict[str, Any]], str | None] | None = None) -> dict[str, Any]:
        """The first item of `result`, which is how every export call answers: an object,
        or the answer is odd. `check(item)` names what else is wrong with it. `once`: one
        short attempt, no retries (a cancel on the way out)."""
        def first_item(result: Any) -> str | None:
            if not isinstance(result, list) or not result:
                return "no result"
            if not isinstance(result[0], dict):
                return "a result that is not an object"
            return check(result[0]) if check else None
        if once:
            envelope = self._send_once(method, path, None, body, first_item, QUICK_TIMEOUT)
        else:
            envelope = self._send(method, path, body=body, check=first_item)
        return envelope["result"][0]

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None = None,
              body: Any = None, check: Callable[[Any], str | None] | None = None,
              before_each: Callable[[], None] | None = None) -> dict[str, Any]:
        return self._with_retries(self._send_once, method, path, params, body, check, None,
                                  before_each)

    def _with_retries(self, call: Callable[..., T], method: str, path: str, *args: Any,
                      odd_tries: int | None = None) -> T:
        """The one retry policy: exponential backoff with full jitter, capped per wait and
        in total (and odd answers at `odd_tries` attempts, when given); then one clear
        failure."""
        odd = [0]

        def give_up(exc: Exception) -> bool:
            odd[0] += isinstance(exc, OddAnswer)
            return self.stopping.is_set() or (odd_tries is not None and odd[0] >= odd_tries)

        retrying = backoff.on_exception(
            backoff.expo,
            RetriableError,
            max_time=self.max_retry_seconds,
            factor=0.5,
            max_value=30,
            jitter=backoff.full_jitter,
            on_backoff=_log_retry,
            giveup=give_up,
            logger=None,  # our own lines: _log_retry, and the one failure below
        )(call)
        try:
            return retrying(method, path, *args)
        except OddAnswer as exc:
            if self.stopping.is_set():
                raise Stopped(f"{method} {path}: not retried, the sync is stopping") from None
            tried = (f"{odd[0]} tries" if odd_tries is not None and odd[0] >= odd_tries
                     else f"{self.max_retry_seconds:.0f} s of retries")
            raise StillOdd(
                f"{exc} (still so after {tried}). Marketo "
                "is answering oddly: run again later; if it persists, report it to Marketo "
                "support with this line.", str(exc)
            ) from None
        except RetriableError as exc:
            if self.stopping.is_set():
                raise Stopped(f"{method} {path}: not retried, the sync is stopping") from None
            raise FatalError(
                f"{exc} (still failing after {self.max_retry_seconds:.0f} s of retries on "
                f"{method} {path}). Marketo or the network is having trouble: run again later."
            ) from None

    def _send_once(self, method: str, path: str, params: Mapping[str, Any] | None,
                   body: Any, check: Callable[[Any], str | None] | None = None,
                   timeout: tuple[float, float] | None = None,
                   before_each: Callable[[], None] | None = None) -> dict[str, Any]:
        if before_each is not None:
            before_each()
        response = self._call(method, path, params=params, json_body=body, timeout=timeout)
        try:
            envelope = response.json()
        except ValueError:
            raise self._odd(method, path, response, "not JSON") from None
        self._check_envelope(envelope, response)
        if not isinstance(envelope, dict) or "success" not in envelope:
            raise self._odd(method, path, response, "not Marketo's envelope")
        if "result" in envelope and not isinstance(envelope["result"], list):
            raise self._odd(method, path, response, "a result that is not a list")
        problem = check(envelope.get("result")) if check else None
        if problem:
            raise self._odd(method, path, response, problem)
        return envelope

    def _odd(self, method: str, path: str, response: requests.Response, what: str,
             body: bytes | None = None) -> OddAnswer:
        shown = self.redact(excerpt(response.content if body is None else body))
        return OddAnswer(f"{method} {path} answered HTTP {response.status_code} with {what}: "
                         f"{shown!r}")

    def open_file(self, path: str, first_byte: int = 0) -> requests.Response:
        """A streaming response for a raw export file, from `first_byte` on (HTTP Range).
        Retries like every other call; a 404 raises FileNotReady for the caller to decide."""
        return self._with_retries(self._open_file_once, "GET", path, first_byte)

    def _open_file_once(self, method: str, path: str, first_byte: int) -> requests.Response:
        # identity: Range counts bytes on the wire, and so must the download.
        headers = {"Accept-Encoding": "identity"}
        if first_byte:
            headers["Range"] = f"bytes={first_byte}-"
        response = self._call(method, path, headers=headers, stream=True)
        if response.status_code == 404:
            response.close()
            raise FileNotReady(f"{path} answered 404: the file is not there")
        if response.status_code == 416 and first_byte:
            response.close()
            total = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
            raise PastTheEnd(f"{path} answered 416 to a Range from byte {first_byte}",
                             int(total.group(1)) if total else None)
        content_type = response.headers.get("Content-Type", "").lower()
        if "json" in content_type or "html" in content_type:
            with response:
                head = response.raw.read(65536, decode_content=True) or b""
            try:
                envelope = json.loads(head)
            except ValueError:
                envelope = None
            self._check_envelope(envelope, response)  # an error code: mapped as usual
            raise self._odd(method, path, response, f"{content_type} instead of the file",
                            head)
        if response.status_code not in (200, 206):
            response.close()
            raise FatalError(f"{path} answered HTTP {response.status_code}: not a file")
        return response

    def _call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json_body: Any = None, headers: Mapping[str, str] | None = None,
              stream: bool = False, timeout: tuple[float, float] | None = None
              ) -> requests.Response:
        token = self.token()
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        with self.pacer.slot():
            self.calls += 1
            try:
                # Redirects are refused: the token must stay with the instance's host.
                response = self.session.request(
                    method, f"{self.base_url}{path}", params=params, json=json_body,
                    headers=all_headers, timeout=timeout or self.timeout, stream=stream,
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                self._unreachable(exc)
                raise RetriableError(self.redact(f"{method} {path}: {type(exc).__name__}: "
                                                 f"{exc}")) from None
        self.reached = True
        self._refuse_redirect(response, f"{method} {path}")
        if response.status_code >= 500 or response.status_code == 429:
            response.close()
            raise RetriableError(f"{method} {path} answered HTTP {response.status_code}")
        if response.status_code in (401, 403):
            response.close()
            self._forget_token(token)
            raise TokenExpired(f"{method} {path} answered HTTP {response.status_code}")
        return response

    def _check_envelope(self, envelope: Any, response: requests.Response) -> None:
        if not isinstance(envelope, dict) or envelope.get("success", True) is True:
            return
        errors = envelope.get("errors")
        if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
            request = response.request
            raise self._odd(str(request.method), urlsplit(str(request.url)).path, response,
                            "no success and no error code")
        code = str(errors[0].get("code"))
        message = self.redact(excerpt(str(errors[0].get("message", "")), 200))
        rule = rule_for(code, message)
        if rule.forget_token:
            self._forget_token(_token_of(response))
        if rule.back_off_window:
            self.pacer.back_off_window()
        raise error_for(code, message, rule)


def _token_of(response: requests.Response) -> str:
    """The access token a call was sent with (its Authorization header)."""
    return str(response.request.headers.get("Authorization", "")).removeprefix("Bearer ")
