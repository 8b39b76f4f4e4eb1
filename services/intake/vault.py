"""Envelope encryption of identities. Pure: no I/O (random nonces and keys only).

Each target has its own 256-bit data key; identities are sealed under it with AES-GCM, bound
to the ``target_ref`` as associated data (a ciphertext copied to another target does not
open). The data key is stored wrapped (AES-GCM) by the master key from
``TNR_IDENTITY_MASTER_KEY``. Erasure destroys the wrapped data key: every identity sealed
under it is then unreadable, wherever copies of the ciphertext went (backups included).
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from services.intake.models import AnyIdentity, Identity

_NONCE = 12
_VERSION = b"\x01"  # first byte of every sealed value, so the format can change later


class VaultError(Exception):
    """A sealed value does not open: wrong key, tampered, or the key was destroyed."""


def master_key_from(secret: str) -> bytes:
    """The key-encryption key: 64 hex digits or base64 of 32 bytes are used as they are; any
    other secret of at least 32 characters is stretched with HKDF-SHA256."""
    text = secret.strip()
    for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return raw
    if len(text) < 32:
        raise ValueError("TNR_IDENTITY_MASTER_KEY must be 32 bytes (64 hex digits) or longer")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tnrwatch identity kek")
    return hkdf.derive(text.encode())


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < 1 + _NONCE + 16 or sealed[:1] != _VERSION:
        raise VaultError("not a sealed value")
    try:
        return AESGCM(key).decrypt(sealed[1 : 1 + _NONCE], sealed[1 + _NONCE :], aad)
    except InvalidTag as exc:
        raise VaultError("the sealed value does not open under this key") from exc


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_data_key(master_key: bytes, data_key: bytes, target_ref: str) -> bytes:
    return _seal(master_key, data_key, b"data-key|" + target_ref.encode())


def unwrap_data_key(master_key: bytes, wrapped: bytes, target_ref: str) -> bytes:
    return _open(master_key, wrapped, b"data-key|" + target_ref.encode())


def nonces(count: int) -> list[bytes]:
    """``count`` fresh random nonces from one read of the system's generator (one system call
    for a request's identities rather than one each)."""
    pool = os.urandom(_NONCE * count)
    return [pool[i:i + _NONCE] for i in range(0, _NONCE * count, _NONCE)]


def seal_identity(data_key: bytes | AESGCM, identity: AnyIdentity, target_ref: str,
                  nonce: bytes | None = None) -> bytes:
    """``data_key`` may be given as its ``AESGCM`` (made once per key: ~3 µs each time);
    ``nonce``: one of :func:`nonces`, never used twice (default: a fresh one)."""
    # Compact JSON (pydantic's or orjson's): a quarter of the cost of model_dump + json.dumps;
    # open_identity reads either form.
    plaintext = identity.model_dump_json(exclude_none=True)
    aead = data_key if isinstance(data_key, AESGCM) else AESGCM(data_key)
    if nonce is None:
        nonce = os.urandom(_NONCE)
    return _VERSION + nonce + aead.encrypt(nonce, plaintext.encode(), b"identity|" + target_ref.encode())


def open_identity(data_key: bytes, sealed: bytes, target_ref: str) -> Identity:
    return Identity.model_validate_json(_open(data_key, sealed, b"identity|" + target_ref.encode()))
