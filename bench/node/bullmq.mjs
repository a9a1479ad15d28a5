// BullMQ on Redis: N jobs added one at a time (add), then N added 1,000 per call (addBulk),
// then drained by PROCESSES worker processes of CONCURRENCY each. Finished jobs are removed
// (removeOnComplete), as Katar's bench queue keeps no history.
//   node bench/node/bullmq.mjs --url redis://127.0.0.1:6379/14 --jobs N
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";
import { args, child, CONCURRENCY, drain, isChild, rate, report } from "./harness.mjs";

const QUEUE = "katar-bench";
// BullMQ asks for a connection made by the caller in an ES module.
const connect = () => new IORedis(args.url || "redis://127.0.0.1:6379/14", { maxRetriesPerRequest: null });
const options = { removeOnComplete: true, removeOnFail: true };

if (isChild) {
  child(async (count) => {
    const worker = new Worker(QUEUE, async () => count(), { connection: connect(), concurrency: CONCURRENCY });
    return () => worker.close();
  });
} else {
  const queue = new Queue(QUEUE, { connection: connect() });
  await queue.obliterate({ force: true });
  const single = await rate(1, (n) => queue.add("noop", { n }, options));
  await queue.obliterate({ force: true });
  const batch = await rate(1000, (start, count) =>
    queue.addBulk(Array.from({ length: count }, (_, i) => ({ name: "noop", data: { n: start + i }, opts: options }))),
  );
  const drained = await drain(async () => {
    const counts = await queue.getJobCounts("waiting", "active", "delayed", "prioritized");
    return Object.values(counts).reduce((a, b) => a + b, 0);
  });
  await queue.close();
  report({ enqueue_per_s: single, enqueue_batch_per_s: batch, ...drained });
}
