"""etcd's token authentication for one client.

The token is fetched with the user's name and password on first use, attached to
every request as ``Authorization: <token>``, and renewed once when etcd says it is no
longer valid (simple tokens expire after 300 s idle; a restarted member forgets them).
Neither the password nor the token is ever logged, shown in a repr or put in an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import gevent.lock

from . import errors
from .wire import JSON

log = logging.getLogger("geventc")

R = TypeVar("R")

#: Sends an authenticate request body within a deadline and returns etcd's decoded answer.
Authenticate = Callable[[JSON, float], JSON]


class TokenAuth:
    """The auth token of one client (no auth when ``username`` is None).

    :meth:`send` runs a request with the current token and, when etcd answers that it
    is invalid, renews it and runs the request once more; concurrent renewals of the
    same stale token fetch one new token.
    """

    def __init__(
        self, username: str | None, password: str | None, authenticate: Authenticate
    ) -> None:
        if (username is None) != (password is None):
            raise errors.InvalidArgument("username and password must be given together")
        if username is not None and (not isinstance(username, str) or not username):
            raise errors.InvalidArgument("username must be a non-empty str")
        if password is not None and not isinstance(password, str):
            raise errors.InvalidArgument("password must be a str")
        self.username = username
        self._password = password
        self._authenticate = authenticate
        self._token: str | None = None
        self._lock = gevent.lock.BoundedSemaphore()

    def __repr__(self) -> str:
        return f"TokenAuth(username={self.username!r})"

    @property
    def token(self) -> str | None:
        """The token in use (None without auth or before the first request)."""
        return self._token

    def send(self, request: Callable[[str | None], R], deadline: float) -> R:
        """``request(token)``, renewing the token once if etcd says it expired; without
        credentials such an answer raises :class:`AuthenticationFailed`."""
        if self.username is None:  # no token to renew: the request runs once
            try:
                return request(None)
            except errors.TokenExpired as exc:
                raise auth_required(exc) from None
        for attempt in range(2):
            token = self._current(deadline)
            try:
                return request(token)
            except errors.TokenExpired as exc:
                if self.username is None:
                    raise auth_required(exc) from None
                if attempt:
                    raise
                self.renew(token, deadline)
        raise AssertionError("unreachable")

    def expired(self, token_used: str | None, deadline: float) -> None:
        """A stream saw ``token_used`` expire: fetch a new one (credentials needed)."""
        if self.username is None:
            raise errors.AuthenticationFailed(
                "etcd requires authentication for this watch; pass username= and password="
            )
        self.renew(token_used, deadline)

    def renew(self, stale: str | None, deadline: float) -> None:
        """Fetch a new token unless another greenlet replaced ``stale`` meanwhile."""
        with self._lock:
            if self._token != stale:
                return
            body = {"name": self.username, "password": self._password}
            try:
                answer = self._authenticate(body, deadline)
            except errors.AuthenticationFailed as exc:  # TokenExpired included
                raise errors.AuthenticationFailed(
                    f"etcd rejected the credentials of user {self.username!r}: {exc.message}",
                    code=exc.code,
                    endpoint=exc.endpoint,
                ) from None
            token = answer.get("token")
            if not isinstance(token, str) or not token:
                raise errors.ProtocolError("etcd's authenticate answer carries no token")
            if not (token.isascii() and token.isprintable()):
                # it goes into every request's head: a line break would forge headers
                raise errors.ProtocolError("etcd's authenticate answer carries a malformed token")
            self._token = token
            log.debug("authenticated to etcd as %r", self.username)

    def _current(self, deadline: float) -> str | None:
        if self.username is None or self._token is not None:
            return self._token
        self.renew(None, deadline)
        return self._token


def auth_required(exc: errors.EtcdError) -> errors.AuthenticationFailed:
    """The error for etcd asking for a token from a client without credentials."""
    return errors.AuthenticationFailed(
        f"etcd requires authentication ({exc.message}); pass username= and password=",
        code=exc.code,
        endpoint=exc.endpoint,
    )
