"""Who is calling: static API keys and JWT bearer tokens, sent as Bearer or Basic.

`token_of_header` reads the `Authorization` header: `Bearer <token>`, or
`Basic base64(user:token)` for clients that only speak HTTP Basic (the
Confluent Schema Registry clients' `basic.auth.user.info`). The Basic user
name is not checked: the token alone says who calls, as with Bearer.

JWTs are checked with PyJWT against a fixed allow-list of algorithms (never
the token's own `alg`), with audience, issuer, expiry and leeway; keys come
from a shared secret (HS*), a PEM public key, or a JWKS file (RS*/ES*/EdDSA).
API keys are compared by SHA-256 digest in constant time, so the configured
digests can live in files that are not secrets themselves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from tidelog.errors import AccessDenied

__all__ = [
    "AuthError",
    "Authenticator",
    "JWTConfig",
    "hash_api_key",
    "new_api_key",
    "token_of_header",
]

MAX_TOKEN_BYTES = 8192
_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})


class AuthError(AccessDenied):
    """The request's credentials are missing or invalid (HTTP 401)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=401)


class JWTConfig(msgspec.Struct, frozen=True, kw_only=True):
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 30.0
    secret: str | None = None
    """Shared secret for HS* algorithms."""
    public_key_file: str | None = None
    """PEM public key for RS*/ES*/EdDSA."""
    jwks_file: str | None = None
    """A JWKS document on disk; the token's `kid` picks the key."""
    principal_claim: str = "sub"

    def __post_init__(self) -> None:
        if not self.algorithms or "none" in {a.lower() for a in self.algorithms}:
            raise ValueError("JWT algorithms must be a non-empty allow-list without 'none'")
        symmetric = _SYMMETRIC & set(self.algorithms)
        if symmetric and (self.public_key_file or self.jwks_file):
            # a public key must never be usable as an HMAC secret (algorithm confusion)
            raise ValueError("do not mix HS* algorithms with public keys")
        if symmetric and not self.secret:
            raise ValueError("HS* algorithms need a secret")
        if not symmetric and not (self.public_key_file or self.jwks_file):
            raise ValueError("asymmetric algorithms need public_key_file or jwks_file")


def token_of_header(header: str) -> str:
    """The token of an `Authorization` header: `Bearer <token>` or `Basic base64(user:token)`.

    Raises `AuthError` for another scheme or a malformed Basic value; the
    message never repeats the header, which carries the secret.
    """
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        return value
    if scheme != "basic":
        raise AuthError("use 'Authorization: Bearer <token>' or 'Basic base64(user:token)'")
    # base64 of a token of MAX_TOKEN_BYTES and a user name: bounded before decoding
    if len(value) > 2 * MAX_TOKEN_BYTES:
        raise AuthError("oversized Basic credentials")
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials: base64 of 'user:token' expected") from None
    _user, colon, token = decoded.partition(":")
    if not colon:
        raise AuthError("malformed Basic credentials: base64 of 'user:token' expected")
    return token


def new_api_key() -> str:
    return "tl_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Authenticator:
    """Turns a bearer token into a principal name, or raises `AuthError`."""

    def __init__(
        self,
        api_keys: dict[str, str],
        jwt: JWTConfig | None = None,
        *,
        more_keys: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """`api_keys` maps SHA-256 hex digests of keys to principals; `more_keys` gives
        more such keys at each call (the store's, which change at runtime: `keystore`)."""
        self._api_keys = dict(api_keys)
        self._more_keys = more_keys
        self._jwt = jwt
        self._jwt_key: Any = None
        self._jwks: dict[str, Any] = {}
        if jwt is not None:
            self._load_jwt_keys(jwt)

    def _load_jwt_keys(self, cfg: JWTConfig) -> None:
        import jwt

        if cfg.secret:
            self._jwt_key = cfg.secret
        elif cfg.public_key_file:
            self._jwt_key = Path(cfg.public_key_file).read_text()
        elif cfg.jwks_file:
            doc = json.loads(Path(cfg.jwks_file).read_text())
            for jwk in jwt.PyJWKSet.from_dict(doc).keys:
                if jwk.key_id:
                    self._jwks[jwk.key_id] = jwk.key

    def authenticate(self, token: str) -> str:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise AuthError("missing or oversized bearer token")
        digest = hash_api_key(token)
        found: str | None = None
        for keys in (self._api_keys, self._more_keys() if self._more_keys else {}):
            for known, principal in keys.items():
                # every digest is compared, in constant time, whether or not one matched
                if hmac.compare_digest(known, digest) and found is None:
                    found = principal
        if found is not None:
            return found
        if self._jwt is not None and token.count(".") == 2:
            return self._decode_jwt(token, self._jwt)
        raise AuthError("invalid credentials")

    def _decode_jwt(self, token: str, cfg: JWTConfig) -> str:
        import jwt

        try:
            key = self._jwt_key
            if self._jwks:
                kid = jwt.get_unverified_header(token).get("kid")
                if not isinstance(kid, str) or kid not in self._jwks:
                    raise AuthError("unknown key id")
                key = self._jwks[kid]
            claims = jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={"require": ["exp"] + (["aud"] if cfg.audience else [])},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {type(exc).__name__}") from None
        principal = claims.get(cfg.principal_claim)
        if not isinstance(principal, str) or not principal:
            raise AuthError(f"token has no {cfg.principal_claim!r} claim")
        return principal
