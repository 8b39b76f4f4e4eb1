"""Keyed pseudonyms of targets. Pure: no I/O.

The same person reported by two partners must get the same ``target_ref``, so the identity is
normalised first (Unicode NFKC, case, whitespace, name order) and then HMAC'd with a secret key:
without the key nobody can test a guessed name against a ``target_ref``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata
import uuid

from services.intake.models import Identity

_INCIDENT_NAMESPACE = uuid.UUID("0b8f3c52-5f0e-4f5e-9d1e-7a2b6c1d9e00")


def normalise_name(name: str) -> str:
    text = unicodedata.normalize("NFKC", name).casefold()
    tokens = [t for t in "".join(c if c.isalnum() else " " for c in text).split() if t]
    return " ".join(sorted(tokens))  # "Li Wei" and "WEI, li" are the same person


def identity_key(identity: Identity) -> str | None:
    """The normalised identity, or None when it names nobody."""
    names = [normalise_name(n) for n in (identity.name, identity.name_zh) if n]
    names = [n for n in names if n]
    if not names:
        return None
    # Latin name first where given: partners write the same person's name in either script.
    birth = identity.birth_date.isoformat() if identity.birth_date else ""
    return f"person|{names[0]}|{birth}"


def _ref(key: bytes, material: str) -> str:
    digest = hmac.new(key, material.encode(), hashlib.sha256).digest()
    return "tr_" + base64.b32encode(digest[:20]).decode().rstrip("=").lower()


def target_ref_for(key: bytes, identity: Identity | None, *, source: str, subject: str) -> str:
    """Without an identity the target is the partner's own incident series."""
    material = identity_key(identity) if identity is not None else None
    if material is None:
        material = f"series|{source}|{subject}"
    return _ref(key, material)


def incident_id_for(source: str, subject: str) -> str:
    """Stable across amendments: the partner's (source, subject) names the incident."""
    return str(uuid.uuid5(_INCIDENT_NAMESPACE, f"{source}\x00{subject}"))
