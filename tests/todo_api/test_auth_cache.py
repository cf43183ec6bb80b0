"""The cache of verified bearer tokens: a token's signature is checked once per minute at
most, never trusted past its `exp`, and a rejected token is never remembered."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from todo_api import auth as auth_module
from todo_api.auth import VERIFIED_TTL_S, Authenticator, InvalidToken
from todo_api.testing import TEST_SECRET


class Clock:
    """Stands in for `time.time` inside todo_api.auth only."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(auth_module, "time", fake)
    return fake


def counting(monkeypatch: pytest.MonkeyPatch, auth: Authenticator) -> list[str]:
    """The tokens whose signature `auth` checks, in order."""
    checked: list[str] = []
    verify = auth.verify

    def spy(token: str) -> Any:
        checked.append(token)
        return verify(token)

    monkeypatch.setattr(auth, "verify", spy)
    return checked


def token(exp: float, sub: str = "alice") -> str:
    return jwt.encode({"sub": sub, "exp": int(exp)}, TEST_SECRET, "HS256")


async def test_a_token_is_verified_once_then_served_from_the_cache(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = Authenticator(secret=TEST_SECRET)
    checked = counting(monkeypatch, auth)
    alice, bob = token(clock.now + 3600), token(clock.now + 3600, sub="bob")
    for _ in range(5):
        assert (await auth.authenticate(alice)).id == "alice"
        assert (await auth.authenticate(bob)).id == "bob"
    assert checked == [alice, bob]
    clock.now += VERIFIED_TTL_S + 1  # the cache's own limit
    assert (await auth.authenticate(alice)).id == "alice"
    assert checked == [alice, bob, alice]


async def test_a_cached_token_is_checked_again_once_past_its_exp(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = Authenticator(secret=TEST_SECRET)
    checked = counting(monkeypatch, auth)
    soon = token(clock.now + 10)
    await auth.authenticate(soon)
    await auth.authenticate(soon)
    assert checked == [soon]
    clock.now += 11  # past exp, within the cache's 60 s: the signature check decides again
    await auth.authenticate(soon)
    assert checked == [soon, soon]


async def test_a_rejected_token_is_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = Authenticator(secret=TEST_SECRET, leeway_s=0)
    checked = counting(monkeypatch, auth)
    expired = token(time.time() - 5)
    forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "x" * 32, "HS256")
    for _ in range(2):
        for bad in (expired, forged):
            with pytest.raises(InvalidToken):
                await auth.authenticate(bad)
    assert checked == [expired, forged, expired, forged]
