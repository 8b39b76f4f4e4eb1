"""API keys: ``tnr_<key_id>_<secret>``. Only a hash of the secret is stored.

The secret is 32 random bytes, so a plain SHA-256 is enough (no password stretching needed);
comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import asyncpg
from fastapi import Request

from shared.problems import Problem
from shared.vocabulary import Scope


@dataclass(frozen=True)
class Principal:
    key_id: str
    partner: str
    scopes: frozenset[str]
    sources: frozenset[str]

    def has(self, scope: Scope | str) -> bool:
        return str(scope) in self.scopes or Scope.ADMIN.value in self.scopes

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN.value in self.scopes


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    api_key: str  # shown once, never stored


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _split(api_key: str) -> tuple[str, str] | None:
    parts = api_key.split("_", 2)
    if len(parts) != 3 or parts[0] != "tnr" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(
    conn: asyncpg.Connection, *, partner: str, sources: Iterable[str], scopes: Iterable[str]
) -> IssuedKey:
    scope_list = sorted({Scope(s).value for s in scopes})
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO partners (partner) VALUES ($1) ON CONFLICT DO NOTHING", partner
        )
        for source in sources:
            owner = await conn.fetchval(
                "INSERT INTO partner_sources (source, partner) VALUES ($1, $2) "
                "ON CONFLICT (source) DO UPDATE SET source = EXCLUDED.source RETURNING partner",
                source,
                partner,
            )
            if owner != partner:
                raise ValueError(f"source {source} is registered to another partner")
        await conn.execute(
            "INSERT INTO api_keys (key_id, partner, key_hash, scopes) VALUES ($1, $2, $3, $4)",
            key_id,
            partner,
            _hash(secret),
            scope_list,
        )
    return IssuedKey(key_id=key_id, api_key=f"tnr_{key_id}_{secret}")


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


async def authenticate(conn: asyncpg.Connection | asyncpg.Pool, api_key: str) -> Principal | None:
    parsed = _split(api_key)
    if parsed is None:
        return None
    key_id, secret = parsed
    row = await conn.fetchrow(
        """SELECT k.partner, k.key_hash, k.scopes,
                  coalesce(array_agg(s.source) FILTER (WHERE s.source IS NOT NULL), '{}') AS sources
             FROM api_keys k LEFT JOIN partner_sources s ON s.partner = k.partner
            WHERE k.key_id = $1 AND k.revoked_at IS NULL
            GROUP BY k.key_id""",
        key_id,
    )
    if row is None or not hmac.compare_digest(bytes(row["key_hash"]), _hash(secret)):
        return None
    return Principal(
        key_id=key_id,
        partner=row["partner"],
        scopes=frozenset(row["scopes"]),
        sources=frozenset(row["sources"]),
    )


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def principal_dependency(
    get_pool: Callable[[Request], asyncpg.Pool],
) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency that authenticates the caller or answers 401."""

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise Problem(401, "Unauthorized", "Send 'Authorization: Bearer <API key>'.")
        principal = await authenticate(get_pool(request), token)
        if principal is None:
            raise Problem(401, "Unauthorized", "The API key is unknown or revoked.")
        request.state.principal = principal
        return principal

    return dependency


def require(principal: Principal, scope: Scope) -> None:
    if not principal.has(scope):
        raise Problem(403, "Forbidden", f"This key lacks the '{scope.value}' scope.")
