"""What the Follower and the Worker share: the status codes worth another
call, and the backoff between calls."""

from __future__ import annotations

import random

import grpc

# What a lost connection, a server shutdown or storage out of reach shows as.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


class Backoff:
    """Exponential pauses from ``first`` to ``most`` seconds, each drawn from
    [half, all] of the step so that clients cut off together do not all come
    back at once."""

    def __init__(self, first: float = 0.1, most: float = 5.0):
        self._first = self._step = first
        self._most = most

    def next(self) -> float:
        pause = self._step / 2 + random.random() * self._step / 2
        self._step = min(2 * self._step, self._most)
        return pause

    def reset(self) -> None:
        self._step = self._first
