// A TypeScript-client worker for tests/acceptance/test_trace_languages.py: takes one task,
// prints {"id", "trace"} (the task's trace context as the handler sees it) on stdout, stops.
//
//   node worker.mjs CLIENT_DIST_INDEX URL QUEUE

const [index, url, queue] = process.argv.slice(2);
const { Worker } = await import(index);

let worker;
worker = new Worker({
  url,
  queue,
  concurrency: 1,
  handler: async (task, context) => {
    process.stdout.write(JSON.stringify({ id: context.id, trace: context.trace ?? null }) + "\n");
    setImmediate(() => worker.stop()); // after this task's ack is queued
    return { by: "node" };
  },
});
await worker.run();
process.exit(0);
