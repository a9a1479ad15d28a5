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

// 1. Read the queue's configuration: how often to poll, and anything else it holds.
async function readConfiguration() {
  for (;;) {
    try {
      const response = await fetch(`${url}/v1/queue/${queue}`, { headers });
      if (response.ok) return (await response.json()).configuration;
      if (response.status < 500) throw new Error(`${response.status} ${await response.text()}`);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error; // TypeError: no answer from the server
    }
    if (stopping) process.exit(0);
    console.error(`cannot read the configuration of ${queue}; trying again`);
    await nap(1000);
  }
}

// One poll: returns {status, tasks}; status 0 means no answer at all.
async function poll(acks, max) {
  try {
    const response = await fetch(`${url}/v1/queue/${queue}`, {
      method: "POST",
      headers,
      body: JSON.stringify({ tasks: acks, max }),
    });
    if (response.status === 200) return { status: 200, tasks: (await response.json()).tasks };
    return { status: response.status, tasks: [], text: await response.text() };
  } catch {
    return { status: 0, tasks: [] };
  }
}

const configuration = await readConfiguration();
const interval = configuration.interval;
console.error(`node worker ready on ${queue}, polling every ${interval} ms`);

// 2. Poll. The acks of the task just finished ride on the request for the next one.
let acks = [];
let failures = 0;
for (;;) {
  if (stopping && acks.length === 0) break;
  const take = stopping ? 0 : 1; // last call: report, take nothing
  const { status, tasks, text } = await poll(acks, take);
  if (status >= 400 && status < 500) {
    console.error(`the server rejected the request (${status}): ${text}`);
    process.exit(1);
  }
  if (status === 0 || status >= 500) {
    // No answer or a 5xx: keep the acks, back off (capped), try again.
    failures += 1;
    const delay = Math.min(5000, 250 * 2 ** failures);
    console.error(`no answer from the server (${status}); trying again in ${delay} ms`);
    await nap(delay);
    continue;
  }
  failures = 0;
  acks = [];
  if (take === 0) break;
  if (tasks.length === 0) {
    await nap(interval); // nothing to do: wait for the next poll
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
