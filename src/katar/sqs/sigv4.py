"""AWS Signature Version 4, verified as the SDKs compute it (botocore's SigV4Auth and
SigV4QueryAuth): the Authorization header form and the presigned query form.

The canonical request is the method, the path (URI-encoded again, "/" and "~" kept), the
query's pairs sorted as sent (the presigned form without ``X-Amz-Signature``), each signed
header as ``name:value`` with its value's runs of spaces made one, the signed headers'
names, and the payload's SHA-256 (in both forms: an ``x-amz-content-sha256`` header must be
that digest; ``UNSIGNED-PAYLOAD`` is refused).
The string to sign is the algorithm, the request's time, the scope
(date/region/service/aws4_request) and the canonical request's SHA-256; the key is derived
from the secret through the scope's date, region and service. Nothing here logs a secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, unquote

from katar.auth import AwsCredential
from katar.sqs.errors import (
    INVALID_CLIENT_TOKEN_ID,
    MISSING_AUTHENTICATION_TOKEN,
    REQUEST_EXPIRED,
    SIGNATURE_DOES_NOT_MATCH,
    SqsError,
)

ALGORITHM: Final = "AWS4-HMAC-SHA256"
#: How far a request's time may be from the server's, either way (seconds).
MAX_SKEW: Final = 15 * 60
#: The longest a presigned URL may be valid (seconds), as AWS allows.
MAX_EXPIRES: Final = 7 * 24 * 3600
#: The most signing keys kept (each a credential's, for a date and a region).
_MAX_KEYS: Final = 1024

Headers = Sequence[tuple[bytes, bytes]]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The key a scope's signatures are made with."""
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def _header_values(headers: Headers, name: str) -> list[str]:
    wanted = name.encode()
    return [v.decode("latin-1") for k, v in headers if k == wanted]


def _canonical_query(query: str, presigned: bool) -> str:
    pairs = []
    if query:
        for pair in query.split("&"):
            key, _, value = pair.partition("=")
            if presigned and key == "X-Amz-Signature":
                continue
            pairs.append((key, value))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Headers,
    signed: Sequence[str],
    payload_hash: str,
    presigned: bool = False,
) -> str:
    """The canonical request, as the SDK that signed the request built it."""
    lines = []
    for name in signed:
        values = _header_values(headers, name)
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}")
    return "\n".join(
        [
            method.upper(),
            quote(path or "/", safe="/~"),
            _canonical_query(query, presigned),
            "\n".join(lines) + "\n",
            ";".join(signed),
            payload_hash,
        ]
    )


def _parse_time(text: str) -> float:
    try:
        when = datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SqsError(
            SIGNATURE_DOES_NOT_MATCH,
            f"the request's X-Amz-Date {text[:40]!r} is not a time as YYYYMMDD'T'HHMMSS'Z'",
        ) from None
    return when.timestamp()


class Verifier:
    """Checks requests' signatures against the declared credentials."""

    def __init__(self, credentials: Sequence[AwsCredential], service: str = "sqs") -> None:
        self._by_id: Mapping[str, AwsCredential] = {c.access_key_id: c for c in credentials}
        self.service = service
        #: Signing keys by secret and scope: a client signs a day's requests with one key,
        #: whose derivation (four HMACs) need not be redone for each request.
        self._keys: dict[tuple[str, str, str, str], bytes] = {}

    def _signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        scope = (secret, date, region, service)
        key = self._keys.get(scope)
        if key is None:
            if len(self._keys) >= _MAX_KEYS:  # scopes come from requests: bounded
                self._keys.clear()
            key = self._keys[scope] = signing_key(secret, date, region, service)
        return key

    def verify(
        self,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        body: bytes,
        now: float,
    ) -> AwsCredential:
        """The credential that signed the request; SqsError when it is unsigned, signed by an
        unknown key, signed wrong, or too old."""
        authorization = _header_values(headers, "authorization")
        presigned = not authorization and "X-Amz-Signature=" in query
        if presigned:
            params = dict(
                (unquote(k), unquote(v)) for k, _, v in (p.partition("=") for p in query.split("&"))
            )
            algorithm = params.get("X-Amz-Algorithm", "")
            credential_text = params.get("X-Amz-Credential", "")
            signed_text = params.get("X-Amz-SignedHeaders", "")
            signature = params.get("X-Amz-Signature", "")
            stamp = params.get("X-Amz-Date", "")
            expires_text = params.get("X-Amz-Expires", "")
        else:
            if not authorization:
                raise SqsError(
                    MISSING_AUTHENTICATION_TOKEN,
                    "Request is missing Authentication Token: sign it with AWS Signature "
                    "Version 4 and an access key of [[aws_credentials]]",
                )
            if len(authorization) > 1:
                raise SqsError(SIGNATURE_DOES_NOT_MATCH, "send one Authorization header")
            algorithm, _, rest = authorization[0].strip().partition(" ")
            fields = {}
            for part in rest.split(","):
                key, _, value = part.strip().partition("=")
                fields[key] = value
            credential_text = fields.get("Credential", "")
            signed_text = fields.get("SignedHeaders", "")
            signature = fields.get("Signature", "")
            dates = _header_values(headers, "x-amz-date")
            stamp = dates[0] if dates else ""
            expires_text = ""
        if algorithm != ALGORITHM:
            raise SqsError(
                INVALID_CLIENT_TOKEN_ID,
                f"only {ALGORITHM} (AWS Signature Version 4) is accepted, not {algorithm[:40]!r}",
            )
        scope = credential_text.split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise SqsError(
                INVALID_CLIENT_TOKEN_ID,
                "the Credential must be <access key id>/<date>/<region>/<service>/aws4_request",
            )
        key_id, date, region, service, _ = scope
        credential = self._by_id.get(key_id)
        if credential is None:
            raise SqsError(
                INVALID_CLIENT_TOKEN_ID,
                "The security token included in the request is invalid.",
            )
        if not stamp:
            raise SqsError(
                MISSING_AUTHENTICATION_TOKEN, "the request has no X-Amz-Date: it must be signed"
            )
        when = _parse_time(stamp)
        if presigned:
            try:
                expires = int(expires_text)
            except ValueError:
                expires = -1
            if not 0 < expires <= MAX_EXPIRES:
                raise SqsError(
                    SIGNATURE_DOES_NOT_MATCH,
                    f"X-Amz-Expires must be a number of seconds from 1 to {MAX_EXPIRES}",
                )
            if now > when + expires or when > now + MAX_SKEW:
                raise SqsError(REQUEST_EXPIRED, "the presigned request has expired")
        elif abs(now - when) > MAX_SKEW:
            raise SqsError(
                REQUEST_EXPIRED,
                f"Signature expired: {stamp} is more than 15 minutes from the server's time",
            )
        if service != self.service or date != stamp[:8]:
            raise SqsError(
                SIGNATURE_DOES_NOT_MATCH,
                f"the credential's scope must be for the service {self.service!r} and the "
                "request's date",
            )
        signed = signed_text.split(";") if signed_text else []
        if "host" not in signed or signed != sorted(signed) or any(not n for n in signed):
            raise SqsError(
                SIGNATURE_DOES_NOT_MATCH,
                "SignedHeaders must name the host header, in lower case and sorted",
            )
        # botocore signs the body's SHA-256 in both forms (an empty body's, for a presigned
        # GET); only S3 presigns UNSIGNED-PAYLOAD, which would leave a body unprotected.
        payload_hash = hashlib.sha256(body).hexdigest()
        if not presigned:
            sent = _header_values(headers, "x-amz-content-sha256")
            # The body is always signed: an UNSIGNED-PAYLOAD would let it be changed.
            if sent and sent[0] != payload_hash:
                raise SqsError(
                    SIGNATURE_DOES_NOT_MATCH,
                    "the x-amz-content-sha256 header must be the SHA-256 of the body",
                )
        request = canonical_request(method, path, query, headers, signed, payload_hash, presigned)
        to_sign = "\n".join(
            [
                ALGORITHM,
                stamp,
                f"{date}/{region}/{service}/aws4_request",
                hashlib.sha256(request.encode()).hexdigest(),
            ]
        )
        wanted = hmac.new(
            self._signing_key(credential.secret, date, region, service),
            to_sign.encode(),
            hashlib.sha256,
        ).hexdigest()
        if not hmac.compare_digest(wanted.encode(), signature.encode()):
            raise SqsError(
                SIGNATURE_DOES_NOT_MATCH,
                "The request signature we calculated does not match the signature you "
                "provided. Check your AWS Secret Access Key and signing method.",
            )
        return credential
