// A Katar worker in Node.js (18 or newer), with nothing but the standard library.
//
//   KATAR_URL=http://127.0.0.1:3000 node examples/node/worker.mjs QUEUE
//
// The work: a task's data is {"n": <number>}; its result is {"by": "node", "square": n*n}.
// Replace handle() with your own; it may be async.

const url = process.env.KATAR_URL ?? "http://127.0.0.1:3000";
const queue = process.argv[2];
if (!queue) {
  console.error("usage: node worker.mjs QUEUE");
  process.exit(2);
}
const headers = { "Content-Type": "application/json" };
if (process.env.KATAR_TOKEN) headers.Authorization = `Bearer ${process.env.KATAR_TOKEN}`;

// SIGTERM or SIGINT: finish the current task, report it, then leave.
let stopping = false;
let wakeUp = () => {};
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    stopping = true;
    wakeUp();
  });
}

// A sleep that a signal cuts short.
function nap(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wakeUp = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

async function handle(data) {
  return { by: "node", square: data.n * data.n };
}

// 401, 403 and 404 are setup mistakes (the token, or the queue's name): retrying cannot help.
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

// Waits longer after each failure in a row: 0.5, 1, 2 ... up to 30 s, with jitter.
let failures = 0;
async function backOff(status) {
  failures += 1;
  const delay = Math.round(Math.min(30000, 250 * 2 ** failures) * (0.5 + Math.random() / 2));
  console.error(`no answer from the server (${status}); trying again in ${delay} ms`);
  await nap(delay);
}

// One request: returns {status, body, text}; status 0 means no answer at all.
async function request(options) {
  try {
    const response = await fetch(`${url}/v1/queue/${queue}`, { headers, ...options });
    const text = await response.text();
    const body = response.status === 200 ? JSON.parse(text) : null;
    return { status: response.status, body, text };
  } catch {
    return { status: 0, body: null, text: "" };
  }
}

// 1. Read the queue's configuration: how often to poll, and anything else it holds.
async function readConfiguration() {
  for (;;) {
    const { status, body, text } = await request({});
    if (status === 200) return body.configuration;
    stopIfMisconfigured(status, text);
    if (stopping) process.exit(0);
    if (transient(status)) {
      await backOff(status);
    } else {
      console.error(`the server rejected the request (${status}): ${text}`);
      process.exit(1);
    }
  }
}

const configuration = await readConfiguration();
failures = 0;
const interval = configuration.interval;
console.error(`node worker ready on ${queue}, polling every ${interval} ms`);

// 2. Poll. The acks of the tasks just finished ride on the request for the next ones.
let acks = [];
let take = 1;
for (;;) {
  if (stopping) {
    if (acks.length === 0) break;
    take = 0; // last call: report, take nothing
  }
  const { status, body, text } = await request({
    method: "POST",
    body: JSON.stringify({ tasks: acks, max: take }),
  });
  stopIfMisconfigured(status, text);
  if (transient(status)) {
    // Keep the acks and resend them with "max": 0: the lost request may have claimed a task
    // already, and asking again would claim another.
    take = 0;
    await backOff(status);
    continue;
  }
  if (status !== 200 && status !== 204) {
    // 400, 409, 422: a bug in the acks; the error says which. Drop them and go on.
    console.error(`the server rejected the acks (${status}): ${text}`);
    acks = [];
    take = 1;
    continue;
  }
  failures = 0;
  acks = [];
  const asked = take;
  take = 1;
  const tasks = status === 200 ? body.tasks : [];
  if (tasks.length === 0) {
    if (asked > 0) await nap(interval); // nothing to do: wait for the next poll
    continue;
  }
  for (const task of tasks) {
    try {
      const result = await handle(task.data);
      acks.push({ _id: task._id, status: "done", attempt: task.attempt, result });
    } catch (error) {
      acks.push({ _id: task._id, status: "failed", attempt: task.attempt, error: String(error) });
    }
  }
}
process.exit(0);
