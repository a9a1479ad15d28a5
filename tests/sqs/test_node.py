"""The AWS SDK for JavaScript v3 (@aws-sdk/client-sqs) and sqs-consumer, unmodified, against
``katar serve`` on SQLite and PostgreSQL: tests/sqs/node/sqs.mjs sends, receives and deletes
(the SDK checks the MD5s of the bodies; the script checks those of the attributes, of a
message sent over SQS and of a task enqueued natively with attributes) and consumes a batch with an sqs-consumer Consumer. The
packages are pinned by tests/sqs/node/package-lock.json (``npm ci`` there, as .ci/run does);
the test skips, saying so, when they are not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.acceptance.conftest import KatarProcess

NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture
def server(sql_server: KatarProcess) -> KatarProcess:
    return sql_server


def test_javascript_sdk_and_sqs_consumer(server: KatarProcess) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "sqs-consumer").is_dir():
        reason = "node, or tests/sqs/node's packages (npm ci there), are not installed"
        if os.environ.get("CI"):  # .ci/run installs them: missing there is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [node, str(NODE_DIR / "sqs.mjs")],
        env={**os.environ, "KATAR_URL": server.url},
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["queueUrl"] == f"{server.url}/000000000000/node"
    assert seen["received"] == {
        "Body": "héllo from node",
        "MessageId": seen["sent"]["MessageId"],
        "lang": "en",
        "blob": [0, 1, 2, 255],
        "receiveCount": "1",
    }
    assert seen["native"] == {
        "Body": "native",
        "lang": "en",
        "blob": [0, 1, 2, 255],
        "sameDigest": True,
        "digestChecked": True,
    }
    assert seen["consumed"] == [f"job {i}" for i in range(5)]
    assert seen["left"] == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
