"""Keyed pseudonyms of targets. Pure: no I/O.

The same person reported by two partners must get the same ``target_ref``, so the identity is
normalised first and then HMAC'd (SHA-256) with ``TNR_PSEUDONYM_KEY``: without the key nobody
can test a guessed name against a ``target_ref``.

Normalisation (docs/intake.md):
- Unicode NFKC (full-width letters, ligatures, compatibility forms), then case folding;
- punctuation and any run of whitespace separate name parts ("Li-Wei" = "li wei");
- name order does not matter for names written with spaces ("Li Wei" = "WEI, li"), because
  partners write family name first or last;
- a name in Chinese characters keeps its order (it has no spaces to sort) and loses any
  spaces a partner typed inside it ("王 伟" = "王伟");
- the Latin ``name`` is used when given, else ``name_zh``; the birth date joins it when given.
  Two partners that only share a name in different scripts cannot be linked (no reliable
  transliteration exists); that is a missed link, never a false one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import uuid
from typing import Any

from services.intake.models import AnyIdentity

_INCIDENT_NAMESPACE = uuid.UUID("0b8f3c52-5f0e-4f5e-9d1e-7a2b6c1d9e00")
_EVENT_NAMESPACE = uuid.UUID("5d0c1a7e-2b61-4d0e-8f59-3c7f1e9a4b21")
# As bytes once: UUID.bytes converts from an int on every access (the top cost of the ids).
_INCIDENT_NAMESPACE_BYTES = _INCIDENT_NAMESPACE.bytes
_EVENT_NAMESPACE_BYTES = _EVENT_NAMESPACE.bytes


# Han ideographs (and CJK symbols): a name written only in them has no order to sort.
_ALL_HAN = re.compile("[\u2e80-\u2fdf\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                      "\U00020000-\U0003134f]+")


# Runs of what is not a letter or digit separate name parts: re's \w is str.isalnum() plus
# "_" (both are Unicode's alphabetic and numeric classes), one C pass instead of one Python
# step per character.
_SEPARATORS = re.compile(r"[\W_]+")


def normalise_name(name: str) -> str:
    text = unicodedata.normalize("NFKC", name).casefold()
    tokens = _SEPARATORS.sub(" ", text).split()
    if tokens and _ALL_HAN.fullmatch("".join(tokens)):
        return "".join(tokens)  # Chinese characters: order is meaningful, spaces are not
    return " ".join(sorted(tokens))  # "Li Wei" and "WEI, li" are the same person


def identity_key(identity: AnyIdentity) -> str | None:
    """The normalised identity, or None when it names nobody."""
    names = [normalise_name(n) for n in (identity.name, identity.name_zh) if n]
    names = [n for n in names if n]
    if not names:
        return None
    # Latin name first where given: partners write the same person's name in either script.
    birth = identity.birth_date.isoformat() if identity.birth_date else ""
    return f"person|{names[0]}|{birth}"


# base32 (RFC 4648, lower case) of 160 bits is 32 letters, 10 bits (two letters) at a time:
# what base64.b32encode(...).lower() gives, without its per-call Python loop (~3 us, ~40 % of
# a target_ref).
_B32_PAIRS = [a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"]


def b32_160(digest: bytes) -> str:
    """``base64.b32encode(digest).decode().lower()`` for exactly 20 bytes (no padding). The
    sixteen pairs written out: a tuple of them costs half a comprehension over shifts."""
    b = int.from_bytes(digest, "big")
    t = _B32_PAIRS
    return "".join((t[b >> 150], t[(b >> 140) & 1023], t[(b >> 130) & 1023], t[(b >> 120) & 1023],
                    t[(b >> 110) & 1023], t[(b >> 100) & 1023], t[(b >> 90) & 1023], t[(b >> 80) & 1023],
                    t[(b >> 70) & 1023], t[(b >> 60) & 1023], t[(b >> 50) & 1023], t[(b >> 40) & 1023],
                    t[(b >> 30) & 1023], t[(b >> 20) & 1023], t[(b >> 10) & 1023], t[b & 1023]))


_BLOCK = 64  # SHA-256's block size, in bytes


@functools.lru_cache(maxsize=8)
def _hmac_states(key: bytes) -> tuple[Any, Any]:
    """SHA-256 after the key's inner and outer pads (RFC 2104): what every HMAC with this key
    starts from, hashed once instead of per call (half of an HMAC of a short name)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in padded)), hashlib.sha256(bytes(b ^ 0x5C for b in padded)))


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """``hmac.digest(key, message, "sha256")``, from the key's precomputed pad states."""
    inner, outer = _hmac_states(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    digest: bytes = outer.digest()
    return digest


def _ref(key: bytes, material: str) -> str:
    return "tr_" + b32_160(hmac_sha256(key, material.encode())[:20])


def person_ref(key: bytes, identity: AnyIdentity) -> str | None:
    material = identity_key(identity)
    return None if material is None else _ref(key, material)


def target_ref_for(key: bytes, identity: AnyIdentity | None, *, source: str, subject: str) -> str:
    """Without an identity the target is the partner's own incident series."""
    ref = person_ref(key, identity) if identity is not None else None
    return ref if ref is not None else _ref(key, f"series|{source}|{subject}")


# The RFC 4122 variant bits (10xx) set in the hex digit that holds them.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _uuid5(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, computed directly (this runs twice an event): the
    version and variant digits are set in the hex text (no bytearray round trip)."""
    h = hashlib.sha1(namespace + name.encode(), usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def incident_id_for(source: str, subject: str) -> str:
    """Stable across amendments: the partner's (source, subject) names the incident."""
    return _uuid5(_INCIDENT_NAMESPACE_BYTES, f"{source}\x00{subject}")


def event_id_for(source: str, report_id: str) -> str:
    """The id of the event intake writes for a partner's report: the same for every attempt,
    so that a consumer can drop a record written twice (a re-send after a crash)."""
    return _uuid5(_EVENT_NAMESPACE_BYTES, f"{source}\x00{report_id}")
