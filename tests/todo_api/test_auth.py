"""Bearer-token auth: HS256 with AUTH_SECRET, JWKS from a loopback server, admin routes,
the development secret and the production guard."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from neondb import ConfigurationError
from todo_api.app import create_app
from todo_api.auth import Authenticator, InvalidToken, dev_secret, issue_token
from todo_api.testing import TEST_SECRET, app_settings, auth_headers, make_client

ROUTES = [
    ("POST", "/api/tasks"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/1"),
    ("PATCH", "/api/tasks/1"),
    ("DELETE", "/api/tasks/1"),
    ("POST", "/api/tasks/1/complete"),
    ("POST", "/api/conversations"),
    ("GET", "/api/conversations"),
    ("GET", "/api/conversations/1"),
    ("DELETE", "/api/conversations/1"),
    ("POST", "/api/conversations/1/messages"),
    ("GET", "/api/conversations/1/messages"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims(**kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert set(r.json()) == {"detail"}


async def test_every_route_needs_a_token(client: httpx.AsyncClient) -> None:
    for method, path in ROUTES:
        assert_401(await client.request(method, path))


async def test_valid_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/tasks", headers=auth_headers("alice"))
    assert r.status_code == 200


BAD_TOKENS = {
    "garbage": "not-a-jwt",
    "three garbage parts": "a.b.c",
    "expired": issue_token(TEST_SECRET, "alice", ttl_s=-3600),
    "wrong secret": issue_token("another-secret-that-is-long-enough-0123", "alice"),
    "alg none": jwt.encode(claims(), None, algorithm="none"),
    "alg none, signature kept": jwt.encode(claims(), None, algorithm="none")
    + issue_token(TEST_SECRET, "alice").rsplit(".", 1)[1],
    "HS512 with the secret": jwt.encode(claims(), TEST_SECRET, algorithm="HS512"),
    "no sub": jwt.encode(claims(sub=None), TEST_SECRET, algorithm="HS256"),
    "empty sub": jwt.encode(claims(sub=""), TEST_SECRET, algorithm="HS256"),
    "numeric sub": jwt.encode(claims(sub=42), TEST_SECRET, algorithm="HS256"),
    "sub too long": jwt.encode(claims(sub="x" * 256), TEST_SECRET, algorithm="HS256"),
    "sub with NUL": jwt.encode(claims(sub="a\x00b"), TEST_SECRET, algorithm="HS256"),
    "no exp": jwt.encode(claims(exp=None), TEST_SECRET, algorithm="HS256"),
    "not yet valid": jwt.encode(claims(nbf=int(time.time()) + 3600), TEST_SECRET, "HS256"),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_tokens_are_401(client: httpx.AsyncClient, name: str) -> None:
    assert_401(await client.get("/api/tasks", headers=bearer(BAD_TOKENS[name])))


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Bearer ", "Basic YWxpY2U6cHc=", "Token abc", "bearer"]
)
async def test_malformed_authorization_header_is_401(
    client: httpx.AsyncClient, header: str
) -> None:
    assert_401(await client.get("/api/tasks", headers={"Authorization": header}))


async def test_leeway_accepts_small_clock_skew(client: httpx.AsyncClient) -> None:
    token = issue_token(TEST_SECRET, "alice", ttl_s=-5)
    assert (await client.get("/api/tasks", headers=bearer(token))).status_code == 200


async def test_admin_route(client: httpx.AsyncClient) -> None:
    assert_401(await client.get("/admin/db/pool-stats"))
    assert_401(await client.get("/admin/db/pool-stats", headers=bearer("x.y.z")))
    r = await client.get("/admin/db/pool-stats", headers=auth_headers("alice"))
    assert r.status_code == 403
    r = await client.get("/admin/db/pool-stats", headers=auth_headers("root", admin=True))
    assert r.status_code == 200
    assert "pools" in r.json()
    for role in ["user,admin", ["user", "admin"]]:
        token = jwt.encode(claims(role=role), TEST_SECRET, algorithm="HS256")
        assert (await client.get("/admin/db/pool-stats", headers=bearer(token))).status_code == 200
    for role in ["user", "administrator", ["user"], 1]:
        token = jwt.encode(claims(role=role), TEST_SECRET, algorithm="HS256")
        assert (await client.get("/admin/db/pool-stats", headers=bearer(token))).status_code == 403


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get("/health/db")).status_code == 200


# audience and issuer ---------------------------------------------------------------------


def test_audience_and_issuer_when_configured() -> None:
    auth = Authenticator(secret=TEST_SECRET, audience="todo", issuer="https://id.example")
    good = jwt.encode(claims(aud="todo", iss="https://id.example"), TEST_SECRET, "HS256")
    assert auth.verify(good).id == "alice"
    for bad in [claims(), claims(aud="other", iss="https://id.example"), claims(aud="todo")]:
        with pytest.raises(InvalidToken, match=r"(?i)aud|iss"):
            auth.verify(jwt.encode(bad, TEST_SECRET, "HS256"))


def test_audience_not_checked_when_not_configured() -> None:
    auth = Authenticator(secret=TEST_SECRET)
    assert auth.verify(jwt.encode(claims(aud="anything"), TEST_SECRET, "HS256")).id == "alice"


# JWKS ------------------------------------------------------------------------------------


class JWKSServer:
    """Serves a JWKS on 127.0.0.1 and counts the fetches."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JWKSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _jwk(public_jwk: dict[str, Any], kid: str, alg: str) -> dict[str, Any]:
    return {**public_jwk, "kid": kid, "alg": alg, "use": "sig"}


KEYS = {
    "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": ec.generate_private_key(ec.SECP256R1()),
}
UNPUBLISHED = ed25519.Ed25519PrivateKey.generate()


def _jwks() -> dict[str, Any]:
    keys = [
        _jwk(OKPAlgorithm.to_jwk(KEYS["EdDSA"].public_key(), as_dict=True), "ed", "EdDSA"),
        _jwk(RSAAlgorithm.to_jwk(KEYS["RS256"].public_key(), as_dict=True), "rsa", "RS256"),
        _jwk(ECAlgorithm.to_jwk(KEYS["ES256"].public_key(), as_dict=True), "ec", "ES256"),
    ]
    return {"keys": keys}


KIDS = {"EdDSA": "ed", "RS256": "rsa", "ES256": "ec"}


def idp_token(alg: str, *, kid: str | None = None, key: Any = None, **kw: Any) -> str:
    # Shaped like Better Auth's JWT plugin: sub, iat, exp, iss, aud, and the user's role.
    body = claims(iat=int(time.time()), iss="http://localhost:3000", aud="http://localhost:3000")
    body.update(kw)
    return jwt.encode(body, key or KEYS[alg], algorithm=alg, headers={"kid": kid or KIDS[alg]})


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer(_jwks()) as server:
        yield server


@pytest.fixture
async def jwks_client(
    neondb_schema_url: str, jwks_server: JWKSServer
) -> AsyncIterator[httpx.AsyncClient]:
    settings = app_settings(
        neondb_schema_url,
        auth_secret=None,
        auth_jwks_url=jwks_server.url,
        auth_audience="http://localhost:3000",
        app_env="production",
    )
    app = create_app(settings)
    async with LifespanManager(app), make_client(app) as c:
        yield c


@pytest.mark.parametrize("alg", list(KEYS))
async def test_jwks_tokens(jwks_client: httpx.AsyncClient, alg: str) -> None:
    h = bearer(idp_token(alg))
    r = await jwks_client.post("/api/tasks", json={"title": f"from {alg}"}, headers=h)
    assert r.status_code == 201
    assert (await jwks_client.get("/api/tasks", headers=h)).json()["total"] >= 1
    admin = bearer(idp_token(alg, role="admin"))
    assert (await jwks_client.get("/admin/db/pool-stats", headers=admin)).status_code == 200
    assert (await jwks_client.get("/admin/db/pool-stats", headers=h)).status_code == 403


async def test_jwks_keys_are_cached(
    jwks_client: httpx.AsyncClient, jwks_server: JWKSServer
) -> None:
    h = bearer(idp_token("EdDSA"))
    assert (await jwks_client.get("/api/tasks", headers=h)).status_code == 200
    before = jwks_server.fetches
    for _ in range(5):
        assert (await jwks_client.get("/api/tasks", headers=h)).status_code == 200
    assert jwks_server.fetches == before


async def test_jwks_rejections(jwks_client: httpx.AsyncClient) -> None:
    pem_public = (
        KEYS["RS256"]
        .public_key()
        .public_bytes(  # type: ignore[union-attr]
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    bad = {
        "unknown kid": idp_token("EdDSA", kid="nope"),
        "unpublished key, known kid": idp_token("EdDSA", key=UNPUBLISHED),
        "expired": idp_token("ES256", exp=int(time.time()) - 3600),
        "wrong audience": idp_token("RS256", aud="https://elsewhere"),
        "no audience": idp_token("RS256", aud=None),
        "no sub": idp_token("EdDSA", sub=None),
        "alg swapped to the key of another alg": idp_token("ES256", kid="rsa"),
        "HS256 (no AUTH_SECRET configured)": issue_token(TEST_SECRET, "alice"),
        # Algorithm confusion: the RSA public key used as an HMAC secret.
        "HS256 signed with the public key": _hmac_forgery(pem_public),
        "alg none": jwt.encode(claims(), None, algorithm="none", headers={"kid": "ed"}),
    }
    for name, token in bad.items():
        r = await jwks_client.get("/api/tasks", headers=bearer(token))
        assert r.status_code == 401, name
        assert r.headers["www-authenticate"] == "Bearer"


def _hmac_forgery(secret: bytes) -> str:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa"}).encode())
    payload = b64(json.dumps(claims(aud="http://localhost:3000")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


async def test_jwks_unreachable_is_503(neondb_schema_url: str) -> None:
    with JWKSServer({"keys": []}) as gone:
        url = gone.url
    settings = app_settings(neondb_schema_url, auth_secret=None, auth_jwks_url=url)
    app = create_app(settings)
    async with LifespanManager(app), make_client(app) as c:
        r = await c.get("/api/tasks", headers=bearer(idp_token("EdDSA")))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        # No AUTH_SECRET here: an HS256 token is still a plain 401, with no fetch.
        assert_401(await c.get("/api/tasks", headers=auth_headers("alice")))


async def test_secret_and_jwks_together(neondb_schema_url: str, jwks_server: JWKSServer) -> None:
    settings = app_settings(neondb_schema_url, auth_jwks_url=jwks_server.url)
    app = create_app(settings)
    async with LifespanManager(app), make_client(app) as c:
        assert (await c.get("/api/tasks", headers=auth_headers("alice"))).status_code == 200
        assert (await c.get("/api/tasks", headers=bearer(idp_token("EdDSA")))).status_code == 200


# the development secret and the production guard ---------------------------------------------


def test_dev_secret_generated_once_with_mode_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = dev_secret(data)
    path = data / "auth_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert dev_secret(data) == first
    assert [p.name for p in data.iterdir()] == ["auth_secret"]  # no temporary left behind


def test_dev_secret_tightens_loose_permissions(tmp_path: Path) -> None:
    dev_secret(tmp_path)
    (tmp_path / "auth_secret").chmod(0o644)
    dev_secret(tmp_path)
    assert stat.S_IMODE((tmp_path / "auth_secret").stat().st_mode) == 0o600


async def test_development_app_uses_the_generated_secret(
    neondb_schema_url: str, tmp_path: Path
) -> None:
    settings = app_settings(neondb_schema_url, auth_secret=None, db_data_dir=tmp_path)
    app = create_app(settings)
    secret = (tmp_path / "auth_secret").read_text().strip()
    async with LifespanManager(app), make_client(app) as c:
        token = issue_token(secret, "dev")
        assert (await c.get("/api/tasks", headers=bearer(token))).status_code == 200
        assert_401(await c.get("/api/tasks", headers=auth_headers("dev")))
    create_app(settings)
    assert (tmp_path / "auth_secret").read_text().strip() == secret


def test_production_without_keys_refuses_to_start(tmp_path: Path) -> None:
    settings = app_settings(
        "postgresql://u@127.0.0.1:1/db",
        auth_secret=None,
        app_env="production",
        db_data_dir=tmp_path,
    )
    with pytest.raises(ConfigurationError, match="AUTH_SECRET") as e:
        create_app(settings)
    assert "AUTH_JWKS_URL" in str(e.value)
    assert not (tmp_path / "auth_secret").exists()


def test_short_secret_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        create_app(app_settings("postgresql://u@127.0.0.1:1/db", auth_secret="short"))


def test_secret_not_in_repr() -> None:
    auth = Authenticator(secret=TEST_SECRET)
    assert TEST_SECRET not in repr(auth)
    settings = app_settings("postgresql://u:pw@127.0.0.1:1/db")
    assert TEST_SECRET not in repr(settings)
