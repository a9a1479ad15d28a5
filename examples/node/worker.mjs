// A Katar worker in Node.js (18 or newer), with nothing but the standard library.
//
//   KATAR_URL=http://127.0.0.1:3000 node examples/node/worker.mjs QUEUE
//
// Everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once (4 by
// default) taken in batches ("max"), long polls ("wait") while idle, the acks of finished
// tasks riding on the next poll, heartbeats for tasks that outlast a third of their lease,
// operators' cancels, backoff without losing an ack, and a clean stop on SIGTERM or SIGINT.
//
// The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
// result is {"by": "node", "square": n*n}. Replace handle() with your own; it may be async.

import { hostname } from "node:os";

const url = process.env.KATAR_URL ?? "http://127.0.0.1:3000";
const queue = process.argv[2];
if (!queue) {
  console.error("usage: node worker.mjs QUEUE");
  process.exit(2);
}
const concurrency = Number(process.env.KATAR_CONCURRENCY ?? 4);
const WAIT = 20; // s: how long an idle poll waits on the server for a task
const name = `${hostname()}/node-${process.pid}`; // the same on every poll (see "Ownership")
const headers = { "Content-Type": "application/json" };
if (process.env.KATAR_TOKEN) headers.Authorization = `Bearer ${process.env.KATAR_TOKEN}`;

async function handle(data) {
  if (data.ms) await new Promise((resolve) => setTimeout(resolve, data.ms));
  return { by: "node", square: data.n * data.n };
}

// -- signals and sleeping ---------------------------------------------------------------

// SIGTERM or SIGINT: take no more tasks, finish the running ones, send their acks, leave.
// A long poll in flight is cut short: it could only bring tasks we no longer want.
let stopping = false;
let longPoll = null; // the AbortController of the long poll in flight
let wakeUp = () => {};
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    stopping = true;
    if (longPoll) longPoll.abort();
    wakeUp();
  });
}

// A sleep that a signal or a finished task cuts short.
function nap(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wakeUp = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

// -- requests ----------------------------------------------------------------------------

// One request: {status, body, text}; status 0 means no answer at all.
async function request(options, timeoutSeconds, controller = new AbortController()) {
  const timer = setTimeout(() => controller.abort(), timeoutSeconds * 1000);
  try {
    const response = await fetch(`${url}/v1/queue/${queue}`, { headers, signal: controller.signal, ...options });
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {}
    return { status: response.status, body, text, lease: Number(response.headers.get("Katar-Lease-Timeout")) };
  } catch {
    return { status: 0, body: null, text: "" };
  } finally {
    clearTimeout(timer);
  }
}

// 401, 403 and 404 for the queue are setup mistakes (the token, or the queue's name):
// retrying cannot help.
const MISCONFIGURED = {
  401: "the server does not know this token: set KATAR_TOKEN to a valid one",
  403: `this token may not use the queue ${queue}`,
  404: `the server has no queue ${queue}: create it, or fix the name`,
};
function stopIfMisconfigured(status, text) {
  if (!(status in MISCONFIGURED)) return;
  console.error(`stopping: ${MISCONFIGURED[status]} (${status} ${text})`);
  process.exit(1);
}

// No answer (status 0), a 5xx, 408 or 429: "try again later".
const transient = (status) => status === 0 || status >= 500 || status === 408 || status === 429;

// Waits longer after each failure in a row: 0.5, 1, 2, 4, then 5 s at most, each times a
// random factor (so that many workers do not retry in step); the first answer resets it.
let failures = 0;
async function backOff(status) {
  failures += 1;
  const delay = Math.round(Math.min(5000, 250 * 2 ** failures) * (0.5 + Math.random() / 2));
  console.error(`no answer from the server (${status}) at ${url}; trying again in ${delay} ms`);
  await nap(delay);
}

// -- 1. the queue's configuration ------------------------------------------------------

let lease = 60000; // ms: the queue's lease, from the Katar-Lease-Timeout header
async function readConfiguration() {
  for (;;) {
    const { status, body, text, lease: given } = await request({}, 30);
    if (status === 200) {
      if (given > 0) lease = given;
      return body.configuration;
    }
    stopIfMisconfigured(status, text);
    if (stopping) process.exit(0);
    if (!transient(status)) {
      console.error(`stopping: the server rejected the request (${status}): ${text}`);
      process.exit(1);
    }
    await backOff(status);
  }
}

const configuration = await readConfiguration();
failures = 0;
console.error(`node worker ready on ${queue}: ${concurrency} tasks at once, lease ${lease} ms`);

// -- 2. the tasks that run, and what is owed to the server ------------------------------

const running = new Map(); // id -> {task, beatAt, lease, cancelled}
let acks = []; // finished tasks' acks, not yet answered by the server

function start(task) {
  const entry = { task, beatAt: Date.now(), lease: task.timeout ?? lease, cancelled: false };
  running.set(task._id, entry);
  (async () => {
    let ack;
    try {
      ack = { _id: task._id, status: "done", attempt: task.attempt, result: await handle(task.data) };
    } catch (error) {
      ack = { _id: task._id, status: "failed", attempt: task.attempt, error: String(error) };
    }
    running.delete(task._id);
    if (!entry.cancelled) acks.push(ack); // a cancelled task gets no ack
    wakeUp();
  })();
}

// A heartbeat every third of the lease renews it.
const beatEvery = (entry) => entry.lease / 3;
function untilNextBeat(now) {
  let next = Infinity;
  for (const entry of running.values()) next = Math.min(next, entry.beatAt + beatEvery(entry) - now);
  return Math.max(0, next);
}

// -- 3. the loop --------------------------------------------------------------------------

// After no answer the last poll may have claimed tasks for us (they come back when their
// lease runs out): until an answer comes, send its acks again with "max": 0, so that nothing
// is claimed twice. A lost poll that carried no ack is simply sent again.
let resending = false;
for (;;) {
  if (stopping && running.size === 0 && acks.length === 0) break;
  const now = Date.now();
  const beats = [...running.values()].filter((e) => !e.cancelled && now - e.beatAt >= beatEvery(e));
  const free = stopping || resending ? 0 : concurrency - running.size;
  if (acks.length === 0 && beats.length === 0 && free === 0) {
    await nap(Math.min(untilNextBeat(now), 1000)); // busy: until a task ends or a beat is due
    continue;
  }
  // Long-poll only while nothing runs: a long poll in flight holds back the acks of tasks
  // that finish meanwhile, and the running tasks' heartbeats, until it is answered.
  const wait = running.size === 0 && !stopping && !resending ? WAIT : 0;
  const sentAcks = acks.slice();
  const sent = [...sentAcks, ...beats.map((e) => ({ _id: e.task._id, status: "in progress", attempt: e.task.attempt }))];
  const controller = new AbortController();
  if (wait) longPoll = controller;
  const { status, body, text } = await request(
    { method: "POST", body: JSON.stringify({ tasks: sent, max: free, wait, worker: name }) },
    wait + 30,
    controller,
  );
  longPoll = null;
  if (status === 0 && stopping && controller.signal.aborted) {
    resending = sentAcks.length > 0; // cut short by a signal: resend its acks, if any
    continue;
  }
  if (transient(status)) {
    // Keep the acks, to send again with "max": 0; with none to send, poll as usual.
    resending = sentAcks.length > 0 || resending;
    if (stopping && failures >= 5) {
      // Their tasks are not lost: their leases run out and they are delivered again.
      console.error(`stopping without sending ${acks.length} ack(s): no answer from ${url}`);
      process.exit(1);
    }
    await backOff(status);
    continue;
  }
  if (status !== 200 && status !== 204) {
    // One faulty ack: the answer's "ack" is its index in the "tasks" sent, and nothing of
    // the request was applied. Drop that ack (a heartbeat will come again) and send the
    // others. That is a 404 for a task as well: only a 404 without "ack" means no queue.
    const index = body && Number.isInteger(body.ack) ? body.ack : -1;
    if (index < 0) stopIfMisconfigured(status, text);
    console.error(`the server rejected ${index < 0 ? "the acks" : `ack ${index}`} (${status}): ${text}`);
    const dropped = index < 0 ? sentAcks : [sent[index]];
    acks = acks.filter((a) => !dropped.includes(a));
    continue;
  }
  failures = 0;
  resending = false;
  acks = acks.filter((a) => !sentAcks.includes(a)); // answered; new ones may have come in
  for (const entry of beats) entry.beatAt = now;
  const answer = status === 200 ? body : { tasks: [] };
  for (const id of answer.cancel ?? []) {
    // An operator cancelled it: stop caring about it and send nothing more for it.
    const entry = running.get(id);
    if (entry) entry.cancelled = true;
    console.error(`task ${id} was cancelled by an operator`);
  }
  for (const task of answer.tasks) start(task);
  if (answer.tasks.length === 0 && running.size > 0 && acks.length === 0) {
    await nap(Math.min(untilNextBeat(Date.now()), configuration.interval)); // busy, nothing new
  }
}
process.exit(0);
