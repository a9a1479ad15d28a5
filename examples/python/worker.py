"""A Katar worker in Python with nothing but the standard library (urllib, threads).

    KATAR_URL=http://127.0.0.1:3000 python3 examples/python/worker.py QUEUE

Everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once (4 by default)
taken in batches ("max"), long polls ("wait") while idle, the acks of finished tasks riding
on the next poll, heartbeats for tasks that outlast a third of their lease, operators'
cancels, backoff without losing an ack, and a clean stop on SIGTERM or SIGINT.

The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
result is {"by": "python", "square": n*n}. Replace handle() with your own. (With pip at
hand, `katar.client.Worker` does all of this for you.)
"""

import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

URL = os.environ.get("KATAR_URL", "http://127.0.0.1:3000")
CONCURRENCY = int(os.environ.get("KATAR_CONCURRENCY", "4"))
WAIT = 20  # s: how long an idle poll waits on the server for a task
NAME = f"{socket.gethostname()}/python-{os.getpid()}"  # the same on every poll ("Ownership")
HEADERS = {"Content-Type": "application/json"}
if os.environ.get("KATAR_TOKEN"):
    HEADERS["Authorization"] = "Bearer " + os.environ["KATAR_TOKEN"]


def handle(data):
    time.sleep(data.get("ms", 0) / 1000)
    return {"by": "python", "square": data["n"] * data["n"]}


# -- signals and sleeping --------------------------------------------------------------------


class Interrupted(Exception):
    """Raised by the signal handler into a long poll in flight, to cut it short."""


# SIGTERM or SIGINT: take no more tasks, finish the running ones, send their acks, leave.
# A long poll in flight is cut short: it could only bring tasks we no longer want.
stopping = threading.Event()
wake = threading.Event()  # set by a signal or a finished task: the loop looks again
long_polling = False


def on_signal(*_):
    stopping.set()
    wake.set()
    if long_polling:
        raise Interrupted()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def nap(seconds):
    """Sleep, cut short by a signal or a finished task."""
    wake.wait(seconds)
    wake.clear()


# -- requests --------------------------------------------------------------------------------


def request(method, path, body=None, timeout=30):
    """(status, decoded JSON or None, headers); status 0 means no answer at all."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method, headers=HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, response.headers
    except urllib.error.HTTPError as error:
        raw = error.read().decode(errors="replace")
        try:
            return error.code, json.loads(raw), error.headers
        except ValueError:
            return error.code, raw, error.headers
    except OSError:
        return 0, None, {}


# 401, 403 and 404 for the queue are setup mistakes (the token, or the queue's name).
def stop_if_misconfigured(queue, status, answer):
    why = {
        401: "the server does not know this token: set KATAR_TOKEN to a valid one",
        403: f"this token may not use the queue {queue}",
        404: f"the server has no queue {queue}: create it, or fix the name",
    }.get(status)
    if why:
        sys.exit(f"stopping: {why} ({status} {json.dumps(answer)})")


def transient(status):
    """No answer, a 5xx, 408 or 429: "try again later"."""
    return status == 0 or status >= 500 or status in (408, 429)


failures = 0


def back_off(status):
    """Waits longer after each failure in a row: 0.5, 1, 2, 4, then 5 s at most, each times
    a random factor (so that many workers do not retry in step); an answer resets it."""
    global failures
    failures += 1
    delay = min(5.0, 0.25 * 2**failures) * random.uniform(0.5, 1)
    print(f"no answer from the server ({status}) at {URL}; trying again in {delay:.1f}s", file=sys.stderr)
    nap(delay)


# -- the worker ------------------------------------------------------------------------------


def main(queue):
    global failures, long_polling
    path = f"/v1/queue/{queue}"

    # 1. Read the queue's configuration, and its lease (the Katar-Lease-Timeout header).
    while True:
        status, answer, headers = request("GET", path)
        if status == 200:
            break
        stop_if_misconfigured(queue, status, answer)
        if stopping.is_set():
            return
        if not transient(status):
            sys.exit(f"stopping: the server rejected the request ({status}): {answer}")
        back_off(status)
    failures = 0
    interval = answer["configuration"]["interval"] / 1000
    lease = int(headers.get("Katar-Lease-Timeout", 60000)) / 1000
    print(f"python worker ready on {queue}: {CONCURRENCY} tasks at once, lease {lease}s", file=sys.stderr)

    # 2. The tasks that run (id -> entry), and the acks owed to the server.
    running = {}
    acks = []
    lock = threading.Lock()  # acks and running are shared with the handlers' threads
    pool = ThreadPoolExecutor(CONCURRENCY)

    def run(entry):
        task = entry["task"]
        try:
            result = handle(task["data"])
            ack = {"_id": task["_id"], "status": "done", "attempt": task["attempt"], "result": result}
        except Exception as error:  # the task failed, not the worker
            ack = {"_id": task["_id"], "status": "failed", "attempt": task["attempt"], "error": repr(error)}
        with lock:
            del running[task["_id"]]
            if not entry["cancelled"]:  # a cancelled task gets no ack
                acks.append(ack)
        wake.set()

    def start(task):
        # A heartbeat every third of the lease: the task's own when it has one.
        every = (task["timeout"] / 1000 if "timeout" in task else lease) / 3
        entry = {"task": task, "beat_at": time.monotonic(), "every": every, "cancelled": False}
        with lock:
            running[task["_id"]] = entry
        pool.submit(run, entry)

    # 3. The loop. After no answer the last poll may have claimed tasks for us (they come
    # back when their lease runs out): until an answer comes, send its acks again with
    # "max": 0, so that nothing is claimed twice. A lost poll with no ack is sent again.
    resending = False
    while True:
        now = time.monotonic()
        with lock:
            if stopping.is_set() and not running and not acks:
                break
            beats = [e for e in running.values() if not e["cancelled"] and now - e["beat_at"] >= e["every"]]
            sent_acks = list(acks)
            busy = len(running)
            next_beat = min((e["beat_at"] + e["every"] - now for e in running.values()), default=1.0)
        free = 0 if stopping.is_set() or resending else CONCURRENCY - busy
        if not sent_acks and not beats and free == 0:
            nap(max(0.0, min(next_beat, 1.0)))  # busy: until a task ends or a beat is due
            continue
        # Long-poll only while nothing runs: a long poll in flight holds back the acks of
        # tasks that finish meanwhile, and the running tasks' heartbeats, until it is answered.
        wait = WAIT if busy == 0 and not stopping.is_set() and not resending else 0
        heartbeats = [
            {"_id": e["task"]["_id"], "status": "in progress", "attempt": e["task"]["attempt"]}
            for e in beats
        ]
        body = {"tasks": sent_acks + heartbeats, "max": free, "wait": wait, "worker": NAME}
        try:
            long_polling = wait > 0 and not stopping.is_set()
            status, answer, _ = request("POST", path, body, timeout=wait + 30)
            long_polling = False
        except Interrupted:  # cut short by a signal: resend its acks, if any
            long_polling = False
            resending = bool(sent_acks)
            continue
        if transient(status):
            # Keep the acks, to send again with "max": 0; with none to send, poll as usual.
            resending = resending or bool(sent_acks)
            if stopping.is_set() and failures >= 5:
                # Their tasks are not lost: their leases run out and they are delivered again.
                sys.exit(f"stopping without sending {len(acks)} ack(s): no answer from {URL}")
            back_off(status)
            continue
        if status not in (200, 204):
            # One faulty ack: the answer's "ack" is its index in the "tasks" sent, and nothing
            # of the request was applied. Drop that ack (a heartbeat comes again) and send the
            # others. That is a 404 for a task as well: only a 404 without "ack" means no queue.
            index = answer.get("ack") if isinstance(answer, dict) else None
            if not isinstance(index, int):
                stop_if_misconfigured(queue, status, answer)
            which = "the acks" if index is None else f"ack {index}"
            print(f"the server rejected {which} ({status}): {json.dumps(answer)}", file=sys.stderr)
            dropped = sent_acks if index is None else body["tasks"][index : index + 1]
            with lock:
                acks[:] = [a for a in acks if not any(a is d for d in dropped)]
            continue
        failures = 0
        resending = False
        with lock:  # answered; new acks may have come in meanwhile
            acks[:] = [a for a in acks if not any(a is s for s in sent_acks)]
        for entry in beats:
            entry["beat_at"] = now
        answer = answer or {"tasks": []}
        for task_id in answer.get("cancel", []):
            # An operator cancelled it: send nothing more for it. (A thread cannot be stopped
            # from outside: a real handler would check a flag between its steps.)
            with lock:
                if task_id in running:
                    running[task_id]["cancelled"] = True
            print(f"task {task_id} was cancelled by an operator", file=sys.stderr)
        for task in answer["tasks"]:
            start(task)
        if not answer["tasks"] and busy and not acks:
            nap(min(next_beat, interval))  # busy, nothing new: until a task ends
    pool.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: worker.py QUEUE")
    main(sys.argv[1])
