"""Bearer-token auth: JWTs verified with PyJWT.

Two kinds of key, chosen by the token's `alg` header:

* `HS256` with `AUTH_SECRET` (the tokens `todo-api token` prints). In development, with
  no secret configured, one is generated once and kept in `DB_DATA_DIR/auth_secret`
  (mode 0600, git-ignored folder); in production a missing secret stops start-up.
* an asymmetric algorithm (EdDSA, RS256, ES256, ...) with the public keys published at
  `AUTH_JWKS_URL` (an identity provider such as Better Auth's JWT plugin), looked up by `kid`.

`alg: none`, an algorithm no configured key can verify, a bad signature, an expired token
(`exp` is required), one without a usable `sub`, or a wrong `aud`/`iss` when those are
configured: 401 with `WWW-Authenticate: Bearer`. `sub` is the user id; the claim
`"role": "admin"` marks an admin.

`AuthenticationGate` checks the token of every `/api/` request at the ASGI level, before
FastAPI reads (and parses) the body: an anonymous client never costs a body read or a parse.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from neondb import ConfigurationError
from todo_api.settings import AppSettings

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "USER_SCOPE_KEY",
    "AuthenticationGate",
    "Authenticator",
    "CurrentUser",
    "InvalidToken",
    "User",
    "current_user",
    "dev_secret",
    "dev_secret_path",
    "issue_token",
    "require_admin",
]

log = logging.getLogger("todo_api")

HMAC_ALGORITHM = "HS256"
ASYMMETRIC_ALGORITHMS = frozenset(
    {"EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least 256 bits
MAX_SUB_LENGTH = 255  # the width of the user_id columns
SECRET_FILE = "auth_secret"
# Verified tokens are remembered this long at most (and never past their `exp`): checking a
# signature costs more than the rest of a cached read. A client reuses its token, so a
# small cache serves nearly every request.
VERIFIED_TTL_S = 60.0
MAX_VERIFIED = 10_000


@dataclass(frozen=True)
class User:
    """The authenticated caller."""

    id: str
    admin: bool = False


def issue_token(secret: str, sub: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
    """An HS256 token for `sub`, valid for `ttl_s` seconds (negative: already expired)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_s}
    if admin:
        claims["role"] = "admin"
    return jwt.encode(claims, secret, algorithm=HMAC_ALGORITHM)


def dev_secret_path(data_dir: Path) -> Path:
    """Where the development signing secret lives."""
    return data_dir / SECRET_FILE


def dev_secret(data_dir: Path) -> str:
    """The development signing secret: read from `data_dir/auth_secret`, generated there
    on first use. Safe when several processes start at once (the file appears atomically,
    the first one wins)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = dev_secret_path(data_dir)
    if not path.exists():
        tmp = data_dir / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic, and fails if another process got there first
            log.info("generated a development auth secret in %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
        log.warning("%s was readable by others; its mode is now 0600", path)
    return path.read_text().strip()


def _is_admin(role: Any) -> bool:
    # "admin", or a list of roles / Better Auth's comma-separated roles that includes it.
    if isinstance(role, str):
        return "admin" in (r.strip() for r in role.split(","))
    if isinstance(role, list):
        return "admin" in role
    return False


class InvalidToken(Exception):
    """The token cannot be accepted; the message is for the log, not the client."""


class Authenticator:
    """Verifies bearer tokens with the configured keys."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        # Empty is unset: a blank key would verify nothing and answer every token 401.
        secret = secret or None
        jwks_url = (jwks_url or "").strip() or None
        if secret is None and jwks_url is None:
            raise ConfigurationError("auth: set AUTH_SECRET or AUTH_JWKS_URL")
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes for HS256 "
                "(generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.jwks = (
            jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if jwks_url
            else None
        )
        self._verified: dict[str, tuple[User, float]] = {}  # token -> (user, valid until)

    def __repr__(self) -> str:
        kinds = [k for k, v in (("HS256", self.secret), ("JWKS", self.jwks)) if v]
        return f"Authenticator({', '.join(kinds)})"

    @classmethod
    def from_settings(cls, settings: AppSettings) -> Authenticator:
        """Keys from the settings; a generated secret in development when none is set."""
        secret = (settings.auth_secret.get_secret_value() if settings.auth_secret else "") or None
        jwks_url = (settings.auth_jwks_url or "").strip() or None
        if secret is None and jwks_url is None:
            if settings.app_env == "production":
                raise ConfigurationError(
                    "APP_ENV=production needs AUTH_SECRET (HS256 key, 32+ bytes) or "
                    "AUTH_JWKS_URL (your identity provider's JWKS) to verify bearer tokens"
                )
            secret = dev_secret(settings.db_data_dir)
        return cls(
            secret=secret,
            jwks_url=jwks_url,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway_s=settings.auth_leeway_s,
        )

    def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(f"malformed: {e}") from None
        alg = header.get("alg")
        if alg == HMAC_ALGORITHM and self.secret is not None:
            return self.secret, alg
        if isinstance(alg, str) and alg in ASYMMETRIC_ALGORITHMS and self.jwks is not None:
            try:
                return self.jwks.get_signing_key_from_jwt(token), alg
            except jwt.PyJWKClientConnectionError:
                raise
            except jwt.PyJWTError as e:
                raise InvalidToken(f"no key: {e}") from None
        raise InvalidToken(f"algorithm {alg!r} not accepted")

    def verify(self, token: str) -> User:
        """The user a token names. Raises InvalidToken, or PyJWKClientConnectionError
        when the JWKS cannot be fetched. May block on the JWKS fetch: see `authenticate`."""
        key, alg = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None
        sub = claims.get("sub")
        if (
            not isinstance(sub, str)
            or not 1 <= len(sub) <= MAX_SUB_LENGTH
            or "\x00" in sub
            or not sub.isprintable()
        ):
            raise InvalidToken("unusable sub claim")
        return User(id=sub, admin=_is_admin(claims.get("role")))

    async def authenticate(self, token: str) -> User:
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[1]:
                return known[0]
            del self._verified[token]  # expired, or due for a fresh check
        if self.jwks is not None and not self._is_hmac(token):
            # PyJWKClient fetches with blocking urllib (cached for 5 minutes): off the loop.
            user = await asyncio.to_thread(self.verify, token)
        else:
            user = self.verify(token)
        # Just verified, so its `exp` is genuine; kept until then (not exp + leeway).
        exp = float(jwt.decode(token, options={"verify_signature": False})["exp"])
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (user, min(exp, now + VERIFIED_TTL_S))
        return user

    def _is_hmac(self, token: str) -> bool:
        try:
            return bool(jwt.get_unverified_header(token).get("alg") == HMAC_ALGORITHM)
        except jwt.PyJWTError:
            return True  # rejected without any fetch


_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <JWT>`; get one with `todo-api token --sub alice`",
)


USER_SCOPE_KEY = "todo_api.user"
"""Where `AuthenticationGate` leaves the verified `User` in the ASGI scope."""


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def _authenticate(auth: Authenticator, token: str | None) -> User:
    """The user a bearer token names, or the HTTPException to answer (401, 503)."""
    if not token:
        raise _unauthorized("Not authenticated")
    try:
        return await auth.authenticate(token)
    except InvalidToken as e:
        log.info("rejected a bearer token: %s", e)
        raise _unauthorized("Invalid or expired token") from None
    except jwt.PyJWKClientConnectionError:
        log.warning("cannot fetch the JWKS to verify a token")
        raise HTTPException(
            status_code=503,
            detail="identity provider unreachable, retry later",
            headers={"Retry-After": "5"},
        ) from None


def _bearer_token(scope: Scope) -> str | None:
    """`Authorization: Bearer <token>` as FastAPI's HTTPBearer reads it."""
    value = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class AuthenticationGate:
    """ASGI middleware: a request under `prefix` needs a valid bearer token, checked before
    the app runs, so before its body is read or parsed. A rejected request gets the same
    401 (or 503) the `current_user` dependency gives; an accepted one carries its `User` in
    the scope (`USER_SCOPE_KEY`), which `current_user` then returns without verifying twice.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Authenticator, prefix: str = "/api") -> None:
        self.app = app
        self.auth = authenticator
        self.prefix = prefix.rstrip("/")

    def _guards(self, scope: Scope) -> bool:
        path = _route_path(scope)
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._guards(scope):
            await self.app(scope, receive, send)
            return
        try:
            user = await _authenticate(self.auth, _bearer_token(scope))
        except HTTPException as e:
            response = JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)
            await response(scope, receive, send)
            return
        scope[USER_SCOPE_KEY] = user
        await self.app(scope, receive, send)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller, from the bearer token: 401 when it is missing or not acceptable. Behind
    `AuthenticationGate` the token was already verified: its `User` is reused."""
    user = request.scope.get(USER_SCOPE_KEY)
    if isinstance(user, User):
        return user
    auth: Authenticator = request.app.state.auth
    return await _authenticate(auth, credentials.credentials if credentials else None)


CurrentUser = Annotated[User, Depends(current_user)]
"""The authenticated user (401 otherwise)."""


async def require_admin(user: CurrentUser) -> User:
    """401 without a valid token, 403 unless the token says `"role": "admin"`."""
    if not user.admin:
        raise HTTPException(status_code=403, detail="Admin only")
    return user
