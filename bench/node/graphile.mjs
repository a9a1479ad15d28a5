// graphile-worker on PostgreSQL: N jobs added one at a time (addJob), then N added 1,000 per
// call (addJobs, graphile_worker.add_jobs), then drained by PROCESSES worker processes of
// CONCURRENCY each. --mode defaults: its options as they come; --mode batched: its documented
// high-throughput settings (a local queue of 500 and batched completions).
//   node bench/node/graphile.mjs --url postgres://... --jobs N --mode defaults|batched
import { Logger, makeWorkerUtils, run } from "graphile-worker";
import pg from "pg";
import { args, child, CONCURRENCY, drain, isChild, JOBS, rate, report } from "./harness.mjs";

const logger = new Logger(() => () => {});
const batching =
  args.mode === "batched"
    ? { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 }
    : {};

if (isChild) {
  child(async (count) => {
    const runner = await run({
      logger,
      noHandleSignals: true,
      taskList: { noop: async () => count() },
      preset: {
        worker: {
          connectionString: args.url,
          concurrentJobs: CONCURRENCY,
          // maxPoolSize as it comes (10): a shared server's 100 connections go fast.
          ...batching,
        },
      },
    });
    return () => runner.stop();
  });
} else {
  const utils = await makeWorkerUtils({ connectionString: args.url, logger });
  await utils.migrate();
  const db = new pg.Client({ connectionString: args.url });
  await db.connect();
  const clear = () => db.query("DELETE FROM graphile_worker._private_jobs");
  await clear();
  const single = await rate(1, (n) => utils.addJob("noop", { n }));
  await clear();
  const batch = await rate(1000, (start, count) =>
    utils.addJobs(Array.from({ length: count }, (_, i) => ({ identifier: "noop", payload: { n: start + i } }))),
  );
  const drained = await drain(async () =>
    Number((await db.query("SELECT count(*) AS n FROM graphile_worker._private_jobs")).rows[0].n),
  );
  await utils.release();
  await db.end();
  report({ enqueue_per_s: single, enqueue_batch_per_s: batch, ...drained });
}
