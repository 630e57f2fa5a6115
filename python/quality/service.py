"""A small client of the service's POST /infer, with retries on retryable answers."""

from __future__ import annotations

import dataclasses
import json
import random
import time
import urllib.error
import urllib.request
from typing import Any

# Answers a retry can change when the service's body does not say.
_RETRYABLE_STATUS = (429, 502, 503, 504)
_MAX_ANSWER_BYTES = 1 << 20
# Answers that mean "not now" rather than a failure.
_BUSY = ("overloaded", "in_progress")


@dataclasses.dataclass
class ServiceError(Exception):
    """ServiceError is a failed /infer: the service's code and message, or a transport error."""

    code: str
    message: str
    retryable: bool
    status: int = 0
    retry_after: float = 0.0

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Outcome is a successful /infer answer with how long it took."""

    answer: dict[str, Any]
    attempts: int
    call_ms: int


class Service:
    """Service calls one vstage service; safe to share between threads.

    A busy service (429 overloaded, or 409 in_progress: another replica runs the job) is waited
    for, after its Retry-After, without using one of the attempts, up to patience seconds per
    case: a run against a one-place service with no queue then takes turns instead of failing.
    """

    def __init__(
        self, url: str, timeout: float, attempts: int, backoff: float = 0.5, patience: float = 600
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"service URL must be http(s), got {url!r}")
        if attempts < 1 or timeout <= 0 or patience < 0:
            raise ValueError("attempts and timeout must be positive, patience not negative")
        self.endpoint = url.rstrip("/") + "/infer"
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.patience = patience

    def infer(self, body: dict[str, Any]) -> Outcome:
        """Stages one image; retries retryable failures with backoff, honouring Retry-After."""
        begin = time.monotonic()
        attempt = calls = 0
        while True:
            calls += 1
            try:
                answer = self._once(body)
                return Outcome(answer, calls, int((time.monotonic() - begin) * 1000))
            except ServiceError as e:
                busy = e.code in _BUSY
                attempt += not busy
                if not e.retryable or attempt >= self.attempts:
                    raise
                ceiling = self.backoff * 2 ** max(attempt - 1, 0)
                wait = max(e.retry_after, random.uniform(ceiling / 2, ceiling))
                if busy and time.monotonic() - begin + wait > self.patience:
                    raise
                time.sleep(wait)

    def _once(self, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.endpoint,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "User-Agent": "vstage-quality"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read(_MAX_ANSWER_BYTES)
                answer: dict[str, Any] = json.loads(data)
                return answer
        except urllib.error.HTTPError as e:
            raise _from_answer(e) from e
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            # No answer: the service deduplicates by image_id, so a retry is safe.
            raise ServiceError("transport", str(e), retryable=True) from e
        except json.JSONDecodeError as e:
            raise ServiceError("bad_answer", "the answer is not JSON", retryable=False) from e


def _from_answer(e: urllib.error.HTTPError) -> ServiceError:
    retry_after = 0.0
    header = e.headers.get("Retry-After", "") if e.headers else ""
    if header.strip().isdigit():
        retry_after = float(header)
    try:
        err = json.loads(e.read(_MAX_ANSWER_BYTES))["error"]
        return ServiceError(
            str(err["code"]), str(err["message"]), bool(err["retryable"]), e.code, retry_after
        )
    except (ValueError, KeyError, TypeError):
        return ServiceError(
            f"http_{e.code}", e.reason or "", e.code in _RETRYABLE_STATUS, e.code, retry_after
        )
