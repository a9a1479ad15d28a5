"""AWS Signature Version 4 on the SQS API: boto3's signatures accepted, every tampered part of
a signed request refused with SQS's error (403) and nothing changed, credentials' roles and
queues applied, and a server with tokens refusing unsigned requests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import httpx
import pytest

from katar.auth import AwsCredential, Role
from katar.sqs.errors import SqsError
from katar.sqs.sigv4 import Verifier
from tests.acceptance.conftest import KatarProcess
from tests.sqs.test_boto3 import client, code

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
KEY = "AKIDADMIN0000001"
WORKER_KEY = "AKIDWORKER000001"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[KatarProcess]:
    """``katar serve`` with a token and two access keys: an admin one, a worker one limited
    to the queue "jobs"; their secrets in a file and in the environment."""
    (tmp_path / "admin.secret").write_text(SECRET + "\n")
    token_sha = hashlib.sha256(b"katar_test_token").hexdigest()
    (tmp_path / "katar.toml").write_text(
        f"""
[store]
url = "sqlite:///{tmp_path / "katar.db"}"

[[tokens]]
token_sha256 = "{token_sha}"
role = "admin"
queues = ["*"]

[[aws_credentials]]
access_key_id = "{KEY}"
role = "admin"
queues = ["*"]
secret_file = "{tmp_path / "admin.secret"}"

[[aws_credentials]]
access_key_id = "{WORKER_KEY}"
role = "worker"
queues = ["jobs"]
secret_env = "KATAR_TEST_WORKER_SECRET"
"""
    )
    import os

    os.environ["KATAR_TEST_WORKER_SECRET"] = "worker-secret"
    try:
        process = KatarProcess(tmp_path, "--config", str(tmp_path / "katar.toml")).start()
    finally:
        del os.environ["KATAR_TEST_WORKER_SECRET"]
    yield process
    process.kill()
    assert SECRET not in process.output()
    assert "worker-secret" not in process.output()


def test_signed_requests(guarded: KatarProcess) -> None:
    admin = client(guarded.url, KEY, SECRET)
    url = admin.create_queue(QueueName="jobs")["QueueUrl"]
    admin.create_queue(QueueName="private")
    admin.send_message(QueueUrl=url, MessageBody="x")
    worker = client(guarded.url, WORKER_KEY, "worker-secret")
    assert [u.rpartition("/")[2] for u in worker.list_queues()["QueueUrls"]] == ["jobs"]
    got = worker.receive_message(QueueUrl=url)["Messages"]
    worker.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        worker.send_message(QueueUrl=url, MessageBody="y")  # a worker may not send
    assert code(denied.value) == "AccessDenied"
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(worker.exceptions.QueueDoesNotExist):
        worker.get_queue_url(QueueName="private")  # outside its queues: as if missing
    wrong = client(guarded.url, KEY, "not the secret")
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        wrong.create_queue(QueueName="made")
    assert code(bad.value) == "SignatureDoesNotMatch"
    unknown = client(guarded.url, "AKIDUNKNOWN00000", SECRET)
    with pytest.raises(botocore.exceptions.ClientError) as who:
        unknown.list_queues()
    assert code(who.value) == "InvalidClientTokenId"
    assert "made" not in str(admin.list_queues())
    # Unsigned: refused on a server with tokens.
    answer = httpx.post(
        guarded.url + "/",
        headers={
            "x-amz-target": "AmazonSQS.ListQueues",
            "content-type": "application/x-amz-json-1.0",
        },
        content=b"{}",
    )
    assert answer.status_code == 403
    assert answer.headers["x-amzn-query-error"] == "MissingAuthenticationToken;Sender"


def _signed(body: bytes, when: datetime | None = None) -> botocore.awsrequest.AWSRequest:
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url="http://127.0.0.1:3000/",
        data=body,
        headers={
            "X-Amz-Target": "AmazonSQS.SendMessage",
            "Content-Type": "application/x-amz-json-1.0",
        },
    )
    signer = botocore.auth.SigV4Auth(
        botocore.credentials.Credentials(KEY, SECRET), "sqs", "us-east-1"
    )
    if when is None:
        signer.add_auth(request)
    else:
        request.context["timestamp"] = when.strftime("%Y%m%dT%H%M%SZ")
        signer._modify_request_before_signing(request)
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        signer._inject_signature_to_request(request, signature)
    request.headers["Host"] = "127.0.0.1:3000"
    return request


def _verify(request: botocore.awsrequest.AWSRequest, now: float | None = None) -> AwsCredential:
    verifier = Verifier(
        [AwsCredential(access_key_id=KEY, secret=SECRET, role=Role.ADMIN, queues=frozenset({"*"}))]
    )
    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    body = request.data if isinstance(request.data, bytes) else request.data.encode()
    query = request.url.partition("?")[2]
    path = request.url.split("127.0.0.1:3000", 1)[1].partition("?")[0]
    when = now if now is not None else datetime.now(UTC).timestamp()
    return verifier.verify(request.method, path, query, headers, body, when)


def test_every_tampered_part_is_refused() -> None:
    body = b'{"QueueUrl": "http://127.0.0.1:3000/000000000000/jobs", "MessageBody": "x"}'
    assert _verify(_signed(body)).access_key_id == KEY

    def replace(request: botocore.awsrequest.AWSRequest, name: str, value: str) -> None:
        del request.headers[name]
        request.headers[name] = value

    tampers: list[Any] = [
        lambda r: setattr(r, "data", body.replace(b'"x"', b'"y"')),
        lambda r: replace(r, "X-Amz-Target", "AmazonSQS.DeleteQueue"),
        lambda r: replace(r, "Host", "evil.example:3000"),
        lambda r: replace(r, "X-Amz-Date", "20200101T000000Z"),
        lambda r: replace(r, "Content-Type", "application/json"),
        lambda r: setattr(r, "method", "PUT"),
        lambda r: setattr(r, "url", r.url.replace(":3000/", ":3000/other")),
        lambda r: setattr(r, "url", r.url + "?extra=1"),
        lambda r: replace(
            r,
            "Authorization",
            r.headers["Authorization"][:-1]
            + ("0" if r.headers["Authorization"][-1] != "0" else "1"),
        ),
        lambda r: replace(
            r, "Authorization", r.headers["Authorization"].replace(KEY, "AKIDWORKER000001")
        ),
    ]
    for index, tamper in enumerate(tampers):
        request = _signed(body)
        tamper(request)
        with pytest.raises(SqsError) as refused:
            _verify(request)
        assert refused.value.kind.status == 403, index


def test_time_skew() -> None:
    body = b"{}"
    old = datetime.now(UTC) - timedelta(minutes=16)
    with pytest.raises(SqsError) as late:
        _verify(_signed(body, old))
    assert late.value.kind.code == "RequestExpired"
    recent = datetime.now(UTC) - timedelta(minutes=14)
    assert _verify(_signed(body, recent)).access_key_id == KEY


def test_presigned_url() -> None:
    request = botocore.awsrequest.AWSRequest(
        method="GET", url="http://127.0.0.1:3000/?Action=ListQueues&Version=2012-11-05"
    )
    request.headers["Host"] = "127.0.0.1:3000"
    botocore.auth.SigV4QueryAuth(
        botocore.credentials.Credentials(KEY, SECRET), "sqs", "us-east-1", expires=60
    ).add_auth(request)
    request.data = b""
    assert _verify(request).access_key_id == KEY
    request.url = request.url.replace("ListQueues", "DeleteQueue")
    with pytest.raises(SqsError):
        _verify(request)


def test_malformed_signatures_say_what_is_wrong() -> None:
    """Each malformed part of a signature is refused with the code SQS gives, before any
    signature is computed."""
    body = b"{}"

    def replace(request: botocore.awsrequest.AWSRequest, name: str, value: str) -> None:
        del request.headers[name]
        request.headers[name] = value

    def authorization(request: botocore.awsrequest.AWSRequest, old: str, new: str) -> None:
        replace(request, "Authorization", request.headers["Authorization"].replace(old, new))

    def presigned(expires: str = "60") -> Any:
        request = botocore.awsrequest.AWSRequest(
            method="GET", url="http://127.0.0.1:3000/?Action=ListQueues&Version=2012-11-05"
        )
        request.headers["Host"] = "127.0.0.1:3000"
        botocore.auth.SigV4QueryAuth(
            botocore.credentials.Credentials(KEY, SECRET), "sqs", "us-east-1", expires=60
        ).add_auth(request)
        request.url = request.url.replace("X-Amz-Expires=60", f"X-Amz-Expires={expires}")
        request.data = b""
        return request

    cases: list[tuple[str, Any, str]] = [
        (
            "two Authorization headers",
            lambda r: r.headers.__setitem__("Authorization", r.headers["Authorization"]),
            "SignatureDoesNotMatch",
        ),
        (
            "another algorithm",
            lambda r: authorization(r, "AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1"),
            "InvalidClientTokenId",
        ),
        (
            "a scope without aws4_request",
            lambda r: authorization(r, "/aws4_request", "/aws5_request"),
            "InvalidClientTokenId",
        ),
        (
            "no X-Amz-Date",
            lambda r: r.headers.__delitem__("X-Amz-Date"),
            "MissingAuthenticationToken",
        ),
        (
            "an X-Amz-Date that is not a time",
            lambda r: replace(r, "X-Amz-Date", "yesterday"),
            "SignatureDoesNotMatch",
        ),
        (
            "a scope for another service",
            lambda r: authorization(r, "/sqs/aws4_request", "/sns/aws4_request"),
            "SignatureDoesNotMatch",
        ),
        (
            "SignedHeaders without host",
            lambda r: authorization(r, "host;", ""),
            "SignatureDoesNotMatch",
        ),
        (
            "an x-amz-content-sha256 that is not the body's",
            lambda r: r.headers.__setitem__("X-Amz-Content-SHA256", "0" * 64),
            "SignatureDoesNotMatch",
        ),
    ]
    for what, tamper, expected in cases:
        request = _signed(body)
        tamper(request)
        with pytest.raises(SqsError) as refused:
            _verify(request)
        assert refused.value.kind.code == expected, what
        # Refused for what it is, not as a signature that does not match.
        assert "signature we calculated" not in refused.value.message, what
    now = datetime.now(UTC).timestamp()
    for what, request, at, expected in [
        ("X-Amz-Expires not a number", presigned("soon"), now, "SignatureDoesNotMatch"),
        ("X-Amz-Expires over 7 days", presigned("604801"), now, "SignatureDoesNotMatch"),
        ("a presigned URL past its expiry", presigned("60"), now + 120, "RequestExpired"),
    ]:
        with pytest.raises(SqsError) as refused:
            _verify(request, at)
        assert refused.value.kind.code == expected, what
