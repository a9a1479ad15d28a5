// pg-boss on PostgreSQL: N jobs sent one at a time (send), then N inserted 1,000 per call
// (insert), then drained by PROCESSES worker processes with CONCURRENCY work() loops each,
// fetching 100 jobs a time (batchSize, as Katar's max 100) and polling every 0.5 s (its
// minimum: a pg-boss worker waits out its polling interval after each fetch).
//   node bench/node/pgboss.mjs --url postgres://... --jobs N --concurrency 8
import PgBoss from "pg-boss";
import { args, child, CONCURRENCY, drain, isChild, rate, report } from "./harness.mjs";

const QUEUE = "katar-bench";
const open = async () => {
  const boss = new PgBoss({ connectionString: args.url, max: CONCURRENCY + 2, supervise: !isChild, schedule: false });
  boss.on("error", (error) => console.error(error));
  await boss.start();
  return boss;
};

if (isChild) {
  child(async (count) => {
    const boss = await open();
    for (let i = 0; i < CONCURRENCY; i++) {
      await boss.work(QUEUE, { batchSize: 100, pollingIntervalSeconds: 0.5 }, async (jobs) => {
        for (const _ of jobs) count();
      });
    }
    return () => boss.stop({ graceful: true, wait: true, close: true });
  });
} else {
  const boss = await open();
  const db = boss.getDb();
  const clear = () => db.executeSql("DELETE FROM pgboss.job WHERE name = $1", [QUEUE]);
  if (await boss.getQueue(QUEUE)) await clear();
  else await boss.createQueue(QUEUE);
  const single = await rate(1, (n) => boss.send(QUEUE, { n }));
  await clear();
  const batch = await rate(1000, (start, count) =>
    boss.insert(Array.from({ length: count }, (_, i) => ({ name: QUEUE, data: { n: start + i } }))),
  );
  const drained = await drain(async () => {
    const rows = await db.executeSql(
      "SELECT count(*) AS n FROM pgboss.job WHERE name = $1 AND state < 'completed'",
      [QUEUE],
    );
    return Number(rows.rows[0].n);
  });
  await boss.stop({ graceful: false, close: true });
  report({ enqueue_per_s: single, enqueue_batch_per_s: batch, ...drained });
}
