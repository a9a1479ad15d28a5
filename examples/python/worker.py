"""A Katar worker in Python with nothing but the standard library (urllib).

    KATAR_URL=http://127.0.0.1:3000 python3 examples/python/worker.py QUEUE

The work: a task's data is {"n": <number>}; its result is {"by": "python", "square": n*n}.
Replace handle() with your own. (With pip at hand, `katar.client.Worker` does all of this
and more: concurrency, long polls, heartbeats.)
"""

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request

URL = os.environ.get("KATAR_URL", "http://127.0.0.1:3000")
HEADERS = {"Content-Type": "application/json"}
if os.environ.get("KATAR_TOKEN"):
    HEADERS["Authorization"] = "Bearer " + os.environ["KATAR_TOKEN"]

# SIGTERM or SIGINT: finish the current task, report it, then leave.
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stopping.set())
signal.signal(signal.SIGINT, lambda *_: stopping.set())


def handle(data):
    return {"by": "python", "square": data["n"] * data["n"]}


def request(method, path, body=None):
    """Returns (status, decoded JSON or None); status 0 means no answer at all."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method, headers=HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, None


def main(queue):
    # 1. Read the queue's configuration: how often to poll, and anything else it holds.
    while True:
        status, answer = request("GET", f"/v1/queue/{queue}")
        if status == 200:
            break
        if 400 <= status < 500:
            sys.exit(f"the server rejected the request ({status}): {answer}")
        if stopping.is_set():
            return
        print(f"cannot read the configuration of {queue}; trying again", file=sys.stderr)
        stopping.wait(1)
    interval = answer["configuration"]["interval"] / 1000
    print(f"python worker ready on {queue}, polling every {interval}s", file=sys.stderr)

    # 2. Poll. The acks of the task just finished ride on the request for the next one.
    acks = []
    failures = 0
    while True:
        if stopping.is_set() and not acks:
            return
        take = 0 if stopping.is_set() else 1  # last call: report, take nothing
        status, answer = request("POST", f"/v1/queue/{queue}", {"tasks": acks, "max": take})
        if 400 <= status < 500:
            sys.exit(f"the server rejected the request ({status}): {answer}")
        if status == 0 or status >= 500:
            # No answer or a 5xx: keep the acks, back off (capped), try again.
            failures += 1
            delay = min(5.0, 0.25 * 2**failures)
            print(f"no answer from the server ({status}); trying again in {delay}s", file=sys.stderr)
            stopping.wait(delay)
            continue
        failures = 0
        acks = []
        if take == 0:
            return
        if status == 204:
            stopping.wait(interval)  # nothing to do: wait for the next poll
            continue
        for task in answer["tasks"]:
            try:
                result = handle(task["data"])
                ack = {"_id": task["_id"], "status": "done", "result": result}
            except Exception as error:  # the task failed, not the worker
                ack = {"_id": task["_id"], "status": "failed", "error": repr(error)}
            ack["attempt"] = task.get("attempt", 1)
            acks.append(ack)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: worker.py QUEUE")
    main(sys.argv[1])
