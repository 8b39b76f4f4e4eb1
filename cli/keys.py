"""``tnrwatch keys create|revoke``: partner API keys, shown once, stored hashed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shared.auth import create_key, revoke_key
from shared.db import SHARED_MIGRATIONS, apply_migrations, create_pool
from shared.settings import get_settings
from shared.vocabulary import Scope


async def keys_create(args: argparse.Namespace) -> int:
    pool = await create_pool(get_settings().database_url, max_size=2)
    try:
        await apply_migrations(pool, "shared", SHARED_MIGRATIONS)
        async with pool.acquire() as conn:
            issued = await create_key(
                conn, partner=args.partner, sources=args.source,
                scopes=args.scope or [Scope.EVENTS_WRITE.value, Scope.INCIDENTS_READ.value],
            )
    finally:
        await pool.close()
    print(f"key_id:  {issued.key_id}")
    print(f"api_key: {issued.api_key}")
    print("The key is shown once; only its hash is stored.", file=sys.stderr)
    return 0


async def keys_revoke(args: argparse.Namespace) -> int:
    pool = await create_pool(get_settings().database_url, max_size=2)
    try:
        async with pool.acquire() as conn:
            revoked = await revoke_key(conn, args.key_id)
    finally:
        await pool.close()
    if not revoked:
        print(f"no active key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="partner API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints it once")
    create.add_argument("--partner", required=True)
    create.add_argument("--source", action="append", default=[], help="a CloudEvents source URN (repeatable)")
    create.add_argument("--scope", action="append", choices=[s.value for s in Scope], help="repeatable")
    create.set_defaults(run=keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=keys_revoke)
