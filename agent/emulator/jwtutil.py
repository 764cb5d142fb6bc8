"""RS256 JSON Web Tokens for the emulator: software statements and access tokens.

Only what the emulator needs: compact serialisation, RS256 signing with `cryptography`, and a
verifier that says exactly why a token is rejected. Must never: accept any algorithm but RS256,
or put a token into an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class JWTError(ValueError):
    """The token is not a valid RS256 JWT from this emulator; the message says why (never the token)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise JWTError("segment is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise JWTError("segment is not valid base64url")


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def key_id(key: rsa.RSAPrivateKey) -> str:
    """A stable `kid`: the first 16 hex digits of the SHA-256 of the public key's DER."""
    from cryptography.hazmat.primitives import serialization

    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def sign(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = b64url(_json(header)) + "." + b64url(_json(payload))
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(sig)


def verify(token: Any, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """Return the payload of a correctly signed RS256 JWT, else raise JWTError with the reason."""
    if not isinstance(token, str):
        raise JWTError("token is not a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("token does not have three dot-separated segments")
    header_raw, payload_raw = b64url_decode(parts[0]), b64url_decode(parts[1])
    try:
        header, payload = json.loads(header_raw), json.loads(payload_raw)
    except (ValueError, UnicodeDecodeError):
        raise JWTError("token header or payload is not JSON")
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise JWTError("token header or payload is not a JSON object")
    if header.get("alg") != "RS256":
        raise JWTError("token algorithm is %r, expected 'RS256'" % (header.get("alg"),))
    sig = b64url_decode(parts[2])
    try:
        public_key.verify(sig, (parts[0] + "." + parts[1]).encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise JWTError("token signature does not verify against the emulator's signing key")
    return payload


def fingerprint(token: str) -> str:
    """An identifier for a token that is safe to store and show (SHA-256 prefix)."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:24]
