// A Katar worker in Node.js (18 or newer), with the katar client (clients/typescript).
//
//   (cd clients/typescript && npm ci)     # once: builds the client into its dist/
//   KATAR_URL=http://127.0.0.1:3000 node examples/node/worker.mjs QUEUE
//
// In a project of your own, `npm install katar` and import from "katar" instead.
//
// The client does everything docs/workers.md describes: up to KATAR_CONCURRENCY tasks at once
// (4 by default) taken in batches, long polls while idle, the acks of finished tasks riding on
// the next poll, heartbeats for tasks that outlast a third of their lease, operators' cancels
// (the handler's signal aborts), backoff without losing an ack, and a clean stop on SIGTERM
// or SIGINT.
//
// The work: a task's data is {"n": <number>, "ms": <optional milliseconds of work>}; its
// result is {"by": "node", "square": n*n}. Replace handle() with your own.

import { Worker } from "../../clients/typescript/dist/index.js";

const queue = process.argv[2];
if (!queue) {
  console.error("usage: node worker.mjs QUEUE");
  process.exit(2);
}

async function handle(task, { signal }) {
  const { n, ms } = task.data;
  if (ms) {
    // Work that stops when an operator cancels the task.
    await new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => (clearTimeout(timer), reject(signal.reason)), { once: true });
    });
  }
  return { by: "node", square: n * n };
}

const worker = new Worker({
  url: process.env.KATAR_URL ?? "http://127.0.0.1:3000",
  token: process.env.KATAR_TOKEN,
  queue,
  concurrency: Number(process.env.KATAR_CONCURRENCY ?? 4),
  handler: handle,
  stopOn: true, // SIGTERM or SIGINT: finish the running tasks, send their acks, then run() resolves
});

try {
  await worker.run();
} catch (error) {
  // 401, 403, or 404 for the queue: a setup mistake (the token, or the queue's name).
  console.error(`stopping: ${error.message}`);
  process.exit(1);
}
process.exit(0);
