// What every Node peer's driver shares: its arguments, the clock, and a drain by worker
// processes forked from the driver itself, each counting the jobs it ran so that a figure is
// never taken of a run that lost or repeated jobs.
import { fork } from "node:child_process";
import { parseArgs } from "node:util";

export const args = parseArgs({
  options: {
    jobs: { type: "string", default: "2000" },
    mode: { type: "string", default: "defaults" },
    processes: { type: "string", default: "2" },
    concurrency: { type: "string", default: "24" },
    url: { type: "string", default: "" },
  },
}).values;
export const JOBS = Number(args.jobs);
export const PROCESSES = Number(args.processes);
export const CONCURRENCY = Number(args.concurrency);
export const isChild = process.env.KATAR_BENCH_CHILD === "1";

export const now = () => Number(process.hrtime.bigint()) / 1e9;

/** Jobs per second of `add(n)` called for n = 0, step, 2 * step ... below JOBS, one call at a time. */
export async function rate(step, add) {
  const started = now();
  for (let n = 0; n < JOBS; n += step) {
    await add(n, Math.min(step, JOBS - n));
  }
  return JOBS / (now() - started);
}

/** In a worker process: `start(count)` starts the peer's workers, which call `count()` once
 * per job run; `stop()` stops them gracefully (flushing what they batch). */
export function child(start) {
  let ran = 0;
  let stop = null;
  process.on("message", async (message) => {
    if (message === "go") {
      stop = await start(() => {
        ran += 1;
      });
    } else if (message === "stop") {
      await stop();
      process.send({ ran }, () => process.exit(0));
    }
  });
  process.send("ready");
}

/** In the driver: fork PROCESSES worker processes, start them together once all are loaded,
 * wait until `remaining()` says no job is left, stop them; the drain rate and the jobs run. */
export async function drain(remaining) {
  const children = [];
  for (let i = 0; i < PROCESSES; i++) {
    const worker = fork(process.argv[1], process.argv.slice(2), {
      env: { ...process.env, KATAR_BENCH_CHILD: "1" },
    });
    // A worker that dies leaves its jobs locked: the drain would never end.
    worker.on("exit", (code) => {
      if (code !== 0) {
        console.error(`a worker process exited with ${code}`);
        process.exit(1);
      }
    });
    await new Promise((resolve) => worker.once("message", resolve));
    children.push(worker);
  }
  const started = now();
  for (const worker of children) worker.send("go");
  while ((await remaining()) > 0) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const elapsed = now() - started;
  const counts = await Promise.all(
    children.map(
      (worker) =>
        new Promise((resolve) => {
          worker.once("message", (message) => resolve(message.ran));
          worker.send("stop");
        }),
    ),
  );
  const ran = counts.reduce((a, b) => a + b, 0);
  if (ran !== JOBS) {
    throw new Error(`${ran} jobs ran for ${JOBS} enqueued`);
  }
  return { drain_per_s: JOBS / elapsed, ran };
}

/** Print the figures as one JSON line and exit (a client left open would keep Node alive). */
export function report(figures) {
  process.stdout.write(JSON.stringify(figures) + "\n", () => process.exit(0));
}
