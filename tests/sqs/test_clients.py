"""Real SQS clients, unmodified, against ``katar serve`` on SQLite and PostgreSQL: the AWS
command line and Celery on kombu's SQS transport. Each runs as its own process, as users run
it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.acceptance.conftest import KatarProcess

BIN = Path(sys.executable).parent


@pytest.fixture
def server(sql_server: KatarProcess) -> KatarProcess:
    return sql_server


def client_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a client process: credentials and a region (any works on a
    server without credentials, on loopback), and no AWS configuration from the home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="AKIDEXAMPLE000000",
        AWS_SECRET_ACCESS_KEY="any",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-credentials"),
        HOME=str(tmp_path),
    )
    return env


def aws(server: KatarProcess, tmp_path: Path, *args: str) -> Any:
    """Run ``aws sqs ...`` against the server; its JSON answer (None when it prints none)."""
    done = subprocess.run(
        [str(BIN / "aws"), "sqs", *args, "--endpoint-url", server.url, "--output", "json"],
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.strip() else None


def test_aws_cli(server: KatarProcess, tmp_path: Path) -> None:
    url = aws(server, tmp_path, "create-queue", "--queue-name", "cli")["QueueUrl"]
    assert url == f"{server.url}/000000000000/cli"
    sent = aws(
        server,
        tmp_path,
        "send-message",
        "--queue-url",
        url,
        "--message-body",
        "hello from the CLI",
        "--message-attributes",
        '{"lang": {"DataType": "String", "StringValue": "en"}}',
    )
    # The CLI checks the digests itself (botocore's MD5 check), and fails on a wrong one.
    assert sent["MD5OfMessageBody"] == hashlib.md5(b"hello from the CLI").hexdigest()
    got = aws(
        server,
        tmp_path,
        "receive-message",
        "--queue-url",
        url,
        "--message-attribute-names",
        "All",
        "--attribute-names",
        "All",
    )
    (message,) = got["Messages"]
    assert message["Body"] == "hello from the CLI"
    assert message["MessageId"] == sent["MessageId"]
    assert message["MessageAttributes"]["lang"]["StringValue"] == "en"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    aws(
        server,
        tmp_path,
        "delete-message",
        "--queue-url",
        url,
        "--receipt-handle",
        message["ReceiptHandle"],
    )
    shown = aws(
        server,
        tmp_path,
        "get-queue-attributes",
        "--queue-url",
        url,
        "--attribute-names",
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
    )["Attributes"]
    assert shown == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
    # An error: the CLI exits non-zero and says what SQS would.
    missing = subprocess.run(
        [
            str(BIN / "aws"),
            "sqs",
            "get-queue-url",
            "--queue-name",
            "nope",
            "--endpoint-url",
            server.url,
        ],
        env=client_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode != 0
    assert "NonExistentQueue" in missing.stderr or "QueueDoesNotExist" in missing.stderr


CELERY_APP = """
import os
from celery import Celery

app = Celery("katar_sqs_test")
app.conf.update(
    broker_url="sqs://AKIDEXAMPLE000000:any@",
    broker_transport_options={{
        "region": "us-east-1",
        "predefined_queues": {{
            "celery": {{"url": "{url}/000000000000/celery"}},
        }},
        "wait_time_seconds": 1,
        "polling_interval": 0.2,
    }},
    task_default_queue="celery",
    result_backend=None,
    worker_hijack_root_logger=False,
)
# kombu's SQS transport reaches the endpoint through boto3: point it at Katar.
os.environ["AWS_ENDPOINT_URL_SQS"] = "{url}"


@app.task
def add(x, y):
    with open({out!r}, "a") as out:
        out.write(f"{{x + y}}\\n")
    return x + y
"""


def test_celery_over_sqs(server: KatarProcess, tmp_path: Path) -> None:
    sqs = boto3.client(
        "sqs",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE000000",
        aws_secret_access_key="any",
    )
    sqs.create_queue(QueueName="celery")
    out = tmp_path / "results.txt"
    (tmp_path / "celery_app.py").write_text(
        textwrap.dedent(CELERY_APP.format(url=server.url, out=str(out)))
    )
    env = client_env(tmp_path)
    env["AWS_ENDPOINT_URL_SQS"] = server.url
    env["PYTHONPATH"] = str(tmp_path)
    # The producer: a separate process, as an application sends its tasks.
    produced = subprocess.run(
        [
            sys.executable,
            "-c",
            "from celery_app import add\nfor i in range(3): add.delay(i, 10)",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr
    counts = sqs.get_queue_attributes(
        QueueUrl=f"{server.url}/000000000000/celery", AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "3"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "--pool",
            "solo",
            "--concurrency",
            "1",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().split()) >= 3:
                break
            if worker.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        worker.terminate()
        try:
            log, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            log, _ = worker.communicate()
    assert out.exists(), log
    assert sorted(int(x) for x in out.read_text().split()) == [10, 11, 12], log
    # Each task deleted once it ran: nothing waits, nothing in flight.
    counts = sqs.get_queue_attributes(
        QueueUrl=f"{server.url}/000000000000/celery",
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert counts == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
