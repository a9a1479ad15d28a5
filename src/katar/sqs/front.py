"""The SQS front: one request of the SQS API (``POST /`` with ``X-Amz-Target:
AmazonSQS.<Action>``, AWS JSON 1.0), authenticated, dispatched to its action
(katar.sqs.actions), and answered with SQS's shapes, or with its error (katar.sqs.errors).

The HTTP app (katar.http.app) routes ``POST /`` here: the server builds the front and hands
it to the app, which knows nothing of SQS (the layers allow the front to use the HTTP
layer's request and answer types, not the reverse).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import parse_qsl, quote

import msgspec

from katar.auth import AwsCredential
from katar.core.engine import Engine
from katar.core.model import trace_context
from katar.errors import KatarError
from katar.http.request import Request
from katar.http.responses import API_HEADERS, Response
from katar.limits import Limits
from katar.sqs import errors as sqs_errors
from katar.sqs import query
from katar.sqs.actions import ACTIONS, Actions, Caller
from katar.sqs.errors import SqsError
from katar.sqs.handles import Handles, handle_key
from katar.sqs.sigv4 import Verifier

log = logging.getLogger("katar")

#: The account id in queue URLs (Katar has no accounts: one fixed id, as SQS's local
#: emulators use).
ACCOUNT_ID: Final = "000000000000"
JSON_TYPE: Final = b"application/x-amz-json-1.0"
TARGET_PREFIX: Final = "AmazonSQS."
_decoder: Final = msgspec.json.Decoder()
#: The headers the front reads: the action, the host (for queue URLs), the trace context.
_WANTED: Final = frozenset({b"x-amz-target", b"host", b"traceparent", b"tracestate"})
_random_bits: Final = random.getrandbits
#: A version 4 UUID's fixed bits: the version (4) and the variant (10).
_UUID_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID_SET: Final = (0x4 << 76) | (0x2 << 62)


class Front:
    """Answers the SQS API over an engine, for the credentials declared (none: an open
    server, which accepts any request, signed or not)."""

    def __init__(
        self,
        engine: Engine,
        *,
        credentials: Sequence[AwsCredential] = (),
        guarded: bool = False,
        scheme: str = "http",
        limits: Limits | None = None,
    ) -> None:
        """``guarded``: the server has tokens or credentials, so every SQS request must be
        signed by one of ``credentials``; an open server (loopback only) accepts any."""
        self.engine = engine
        self.guarded = guarded or bool(credentials)
        self._verifier = Verifier(credentials)
        self.actions = Actions(
            engine,
            Handles(handle_key(credentials)),
            scheme=scheme,
            account=ACCOUNT_ID,
            limits=limits or Limits(),
        )

    async def __call__(self, request: Request, method: str = "POST") -> Response:
        """The answer to one request of the SQS API: ``POST /`` (either protocol), or a
        query protocol request sent to a queue's URL (``request.params``: its account and
        name)."""
        request_id = _request_id()
        action = "?"
        headers = _wanted_headers(request)
        target = headers.get(b"x-amz-target")
        xml = target is None
        try:
            if target is not None:
                if not target.startswith(TARGET_PREFIX):
                    raise SqsError(
                        sqs_errors.INVALID_ACTION,
                        f"X-Amz-Target must be AmazonSQS.<Action>, not {target[:80]!r}",
                    )
                action = target[len(TARGET_PREFIX) :]
            else:
                flat = _form(request)
                action = flat.get("Action", "")
                if not action:
                    raise SqsError(
                        sqs_errors.MISSING_ACTION,
                        "send the action: Action=<Action> (the query protocol), or an "
                        "X-Amz-Target header AmazonSQS.<Action> (AWS JSON 1.0)",
                    )
            spec = ACTIONS.get(action)
            if spec is None:
                raise SqsError(
                    sqs_errors.INVALID_ACTION,
                    f"The action {action[:80]} is not valid for this endpoint.",
                )
            caller = self._authenticate(request, method)
            host = headers.get(b"host") or "localhost"
            if xml:
                queue_url = None
                if request.params:
                    queue_url = self.actions.url_of(host, request.params[-1])
                params = query.parameters(action, flat, queue_url)
            else:
                try:
                    params = _decoder.decode(request.body) if request.body.strip() else {}
                except msgspec.DecodeError:
                    raise sqs_errors.invalid("the body is not valid JSON") from None
                if not isinstance(params, dict):
                    raise sqs_errors.invalid("the body must be a JSON object of the parameters")
            result = await spec.handler(
                self.actions,
                params,
                Caller(
                    caller,
                    spec.access,
                    host,
                    request.hang_up,
                    trace_context(headers.get(b"traceparent"), headers.get(b"tracestate")),
                ),
            )
        except SqsError as exc:
            return _error(exc, request_id, xml)
        except KatarError as exc:
            sqs = sqs_errors.from_katar(exc)
            if sqs.kind.status >= 500 and sqs.kind is sqs_errors.INTERNAL_ERROR:
                log.error("internal error on SQS %s: %s", action, exc.message, exc_info=exc)
            return _error(sqs, request_id, xml)
        except Exception:
            log.exception("internal error on SQS %s", action)
            return _error(
                SqsError(sqs_errors.INTERNAL_ERROR, "internal server error; see the server's log"),
                request_id,
                xml,
            )
        if xml:
            return Response(
                200, query.answer(action, result, request_id), _headers(request_id, xml)
            )
        return Response(200, msgspec.json.encode(result), _headers(request_id))

    def _authenticate(self, request: Request, method: str) -> AwsCredential | None:
        """The credential that signed the request; None on an open server."""
        if not self.guarded:
            return None
        return self._verifier.verify(
            method,
            "/" + "/".join(quote(part, safe="") for part in request.params),
            request.query_string.decode("latin-1"),
            request.headers,
            request.body,
            time.time(),
        )


def _request_id() -> str:
    """A random (version 4) UUID's text, as SQS's request ids are, made without a UUID
    object nor a system call on every request: an id names a request in logs, it guards
    nothing, so the random module's bits serve."""
    x = f"{_random_bits(128) & _UUID_CLEAR | _UUID_SET:032x}"
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _form(request: Request) -> dict[str, str]:
    """A query protocol request's parameters: the query string's, then the form body's."""
    flat = dict(parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True))
    if request.body:
        try:
            text = request.body.decode()
        except UnicodeDecodeError:
            raise sqs_errors.invalid("the form body must be UTF-8") from None
        flat.update(parse_qsl(text, keep_blank_values=True))
    for signing in (
        "X-Amz-Signature",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
    ):
        flat.pop(signing, None)
    return flat


def _wanted_headers(request: Request) -> dict[bytes, str]:
    """The headers the front reads (the first of each name), in one pass over them."""
    found: dict[bytes, str] = {}
    for key, value in request.headers:
        if key in _WANTED and key not in found:
            found[key] = value.decode("latin-1")
    return found


def _headers(request_id: str, xml: bool = False) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", query.XML_TYPE if xml else JSON_TYPE),
        (b"x-amzn-requestid", request_id.encode()),
        *API_HEADERS,
    ]


def _error(exc: SqsError, request_id: str, xml: bool = False) -> Response:
    """An error as SQS answers it: in XML for the query protocol; in AWS JSON 1.0, with its
    query code in ``x-amzn-query-error`` (which the SDKs take as the error's code)."""
    kind = exc.kind
    if xml:
        return Response(kind.status, query.error(exc, request_id), _headers(request_id, xml))
    body = msgspec.json.encode(
        {"__type": f"com.amazonaws.sqs#{kind.shape}", "message": exc.message}
    )
    fault = "Sender" if kind.sender else "Receiver"
    headers = _headers(request_id)
    headers.append((b"x-amzn-query-error", f"{kind.code};{fault}".encode()))
    return Response(kind.status, body, headers)
