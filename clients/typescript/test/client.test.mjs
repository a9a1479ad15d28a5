// The client against a real `katar serve`, on each store of STORES.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { after, before, describe, it } from "node:test";

import { KatarError, Producer, Retry, Worker } from "../dist/index.js";
import { STORES, Server, pause, token, until } from "./server.mjs";

const quiet = () => {};

for (const store of STORES) {
  describe(`on ${store}`, () => {
    let server;
    let producer;
    before(async () => {
      server = await new Server(store).start();
      producer = new Producer({ url: server.url });
    });
    after(async () => {
      await server?.close();
    });

    it("enqueues one task and a batch, reads, lists and cancels them", async () => {
      await server.queue("p");
      const one = await producer.enqueue("p", { n: 1 }, { priority: "high", key: "customer-1" });
      assert.equal(one.status, "queued");
      assert.equal(one.priority, 10);
      assert.deepEqual(one.data, { n: 1 });
      const many = await producer.enqueueMany("p", [{ n: 2 }, { n: 3 }, { n: 4 }], { delay: 3600 });
      assert.deepEqual(many.map((t) => t.data.n), [2, 3, 4]);
      const own = await producer.enqueueMany("p", [{ data: { n: 5 }, priority: -10 }, { data: { n: 6 }, status: "paused" }], { asTasks: true });
      assert.deepEqual(own.map((t) => [t.priority, t.status]), [[-10, "queued"], [0, "paused"]]);
      assert.deepEqual((await producer.get("p", many[1]._id)).data, { n: 3 });
      const first = await producer.list("p", { limit: 2 });
      assert.equal(first.tasks.length, 2);
      assert.ok(first.next);
      const rest = await producer.list("p", { after: first.next, limit: 100 });
      assert.deepEqual([...first.tasks, ...rest.tasks].map((t) => t.data.n), [1, 2, 3, 4, 5, 6]);
      assert.equal((await producer.list("p", { status: "paused" })).tasks.length, 1);
      assert.equal((await producer.cancel("p", one._id)).status, "cancelled");
      await assert.rejects(producer.get("p", "999999"), (e) => e instanceof KatarError && e.status === 404);
      await assert.rejects(producer.enqueue("p", 1, { delay: 1, run_at: new Date() }), (e) => e.status === 422 && /delay|run_at/.test(e.message));
    });

    it("sends one idempotency key per call, the caller's when given, and the trace context", async () => {
      await server.queue("idem");
      const sent = [];
      const spy = new Producer({ url: server.url, fetch: (url, init) => (sent.push(init.headers), fetch(url, init)) });
      const a = await spy.enqueue("idem", { n: 1 }, { idempotencyKey: "order-17", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate: "k=v" });
      const b = await spy.enqueue("idem", { n: 1 }, { idempotencyKey: "order-17" });
      assert.equal(a._id, b._id); // the second created nothing
      await spy.enqueue("idem", { n: 2 });
      await spy.enqueue("idem", { n: 2 });
      assert.equal(sent[0]["Idempotency-Key"], "order-17");
      assert.equal(sent[0].traceparent, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
      assert.equal(sent[0].tracestate, "k=v");
      assert.equal(sent[1].traceparent, undefined);
      assert.notEqual(sent[2]["Idempotency-Key"], sent[3]["Idempotency-Key"]);
      assert.equal((await producer.list("idem")).tasks.length, 3);
    });

    it("runs tasks side by side, taken in batches, and gets their results", async () => {
      await server.queue("c", { configuration: { interval: 100 } });
      await producer.enqueueMany("c", Array.from({ length: 12 }, (_, n) => ({ n })));
      const polls = [];
      let now = 0;
      let most = 0;
      const worker = new Worker({
        url: server.url,
        queue: "c",
        concurrency: 4,
        log: quiet,
        fetch: async (url, init) => {
          const response = await fetch(url, init);
          if (init.method === "POST") polls.push({ sent: JSON.parse(init.body), got: response.status === 200 ? (await response.clone().json()).tasks.length : 0 });
          return response;
        },
        handler: async (task, ctx) => {
          now += 1;
          most = Math.max(most, now);
          await pause(150);
          now -= 1;
          assert.equal(ctx.attempt, 1);
          return { square: task.data.n ** 2 };
        },
      });
      const running = worker.run();
      await until(async () => (await producer.list("c", { status: "done", limit: 100 })).tasks.length === 12, 60, "12 done");
      await worker.stop();
      await running;
      assert.equal(most, 4);
      assert.ok(polls.some((p) => p.sent.max > 1 && p.got > 1), "a poll took several tasks");
      assert.ok(polls.some((p) => p.sent.tasks.some((a) => a.status === "done") && p.sent.max > 0), "acks rode on polls");
      const done = (await producer.list("c", { status: "done", limit: 100 })).tasks;
      assert.deepEqual(done.map((t) => t.result.square).sort((x, y) => x - y), Array.from({ length: 12 }, (_, n) => n * n).sort((x, y) => x - y));
    });

    it("heartbeats a task that outlasts its lease, with its progress", async () => {
      await server.queue("slow", { timeout: 1500 });
      const task = await producer.enqueue("slow", { steps: 6 });
      const seen = [];
      const worker = new Worker({
        url: server.url,
        queue: "slow",
        log: quiet,
        handler: async (t, ctx) => {
          for (let step = 1; step <= t.data.steps; step += 1) {
            await pause(500);
            ctx.progress({ done: step, of: t.data.steps });
          }
          return "ok";
        },
      });
      const running = worker.run();
      await until(async () => {
        const record = await producer.get("slow", task._id);
        if (record.progress) seen.push(record.progress.done);
        return record.status === "done";
      }, 60, "the slow task done");
      await worker.stop();
      await running;
      const record = await producer.get("slow", task._id);
      assert.equal(record.attempts, 1); // never delivered again: the heartbeats kept its lease
      assert.equal(record.result, "ok");
      assert.equal(record.progress.of, 6); // the last heartbeat's: a done ack keeps it
      assert.ok(seen.some((n) => n < 6), "progress was seen while it ran");
    });

    it("aborts the handler's signal when an operator cancels the task", async () => {
      await server.queue("cancel", { timeout: 1500 });
      const doomed = await producer.enqueue("cancel", { wait: true });
      let reason = null;
      const worker = new Worker({
        url: server.url,
        queue: "cancel",
        concurrency: 2,
        log: quiet,
        handler: (task, ctx) =>
          task.data.wait
            ? new Promise((_, reject) => ctx.signal.addEventListener("abort", () => ((reason = ctx.signal.reason), reject(ctx.signal.reason))))
            : "later",
      });
      const running = worker.run();
      await until(async () => (await producer.get("cancel", doomed._id)).status === "in progress", 30, "running");
      const asked = await producer.cancel("cancel", doomed._id);
      assert.equal(asked.cancel_requested, true);
      await until(() => reason !== null, 30, "the signal aborted");
      assert.match(String(reason.message), /cancelled by an operator/);
      const later = await producer.enqueue("cancel", { wait: false });
      assert.equal((await producer.get("cancel", later._id, { wait: 30 })).status, "done");
      await worker.stop();
      await running;
      const record = await producer.get("cancel", doomed._id);
      assert.equal(record.status, "cancelled");
    });

    it("retries a task whose handler throws Retry, and fails it for good otherwise", async () => {
      await server.queue("fail", { retry_delay: 0 });
      const retried = await producer.enqueue("fail", { retry: true });
      const failed = await producer.enqueue("fail", { retry: false });
      const worker = new Worker({
        url: server.url,
        queue: "fail",
        log: quiet,
        handler: (task, ctx) => {
          if (task.data.retry && ctx.attempt === 1) throw new Retry("not yet");
          if (!task.data.retry) throw new Error("broken");
          return ctx.attempt;
        },
      });
      const running = worker.run();
      const [a, b] = await Promise.all([producer.get("fail", retried._id, { wait: 30 }), producer.get("fail", failed._id, { wait: 30 })]);
      await worker.stop();
      await running;
      assert.equal(a.status, "done");
      assert.equal(a.result, 2);
      assert.equal(b.status, "failed");
      assert.match(b.error, /broken/);
    });

    it("stops gracefully: no new task, the running one finished and acknowledged", async () => {
      await server.queue("g");
      const first = await producer.enqueue("g", { ms: 800 });
      let started = 0;
      const worker = new Worker({
        url: server.url,
        queue: "g",
        log: quiet,
        handler: async (task) => {
          started += 1;
          await pause(task.data.ms);
          return "finished";
        },
      });
      const running = worker.run();
      await until(async () => started === 1, 30, "started");
      const queued = await producer.enqueue("g", { ms: 0 });
      const stopped = worker.stop();
      await running;
      await stopped;
      assert.equal((await producer.get("g", first._id)).status, "done");
      assert.equal((await producer.get("g", queued._id)).status, "queued");
      assert.equal(started, 1);
    });

    it("abandons a task that outlasts the grace period, aborting its signal", async () => {
      await server.queue("grace", { timeout: 60000 });
      const task = await producer.enqueue("grace", {});
      let aborted = null;
      const worker = new Worker({
        url: server.url,
        queue: "grace",
        grace: 200,
        log: quiet,
        handler: (_, ctx) => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => ((aborted = ctx.signal.reason), reject(ctx.signal.reason)))),
      });
      const running = worker.run();
      await until(async () => (await producer.get("grace", task._id)).status === "in progress", 30, "running");
      await worker.stop();
      await running;
      assert.match(String(aborted?.message), /stopping/);
      // No ack: the task stays leased until its lease runs out, then is delivered again.
      assert.equal((await producer.get("grace", task._id)).status, "in progress");
    });

    it("stops on SIGTERM with stopOn, cutting its long poll short", async () => {
      await server.queue("term");
      const script = `
        import { Worker } from ${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)};
        const worker = new Worker({ url: process.argv[1], queue: "term", stopOn: true, wait: 60, handler: async () => "x" });
        await worker.run();
        console.error("drained");
      `;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script, server.url], { stdio: ["ignore", "ignore", "pipe"] });
      let log = "";
      child.stderr.on("data", (chunk) => (log += chunk));
      const exited = new Promise((r) => child.on("exit", (code) => r(code)));
      try {
        await until(() => log.includes("ready"), 30, "the worker ready");
        await pause(300); // in its long poll
        child.kill("SIGTERM");
        assert.equal(await Promise.race([exited, pause(20000).then(() => "hung")]), 0, log);
        assert.match(log, /drained/);
      } finally {
        if (child.exitCode === null) child.kill("SIGKILL");
      }
    });
  });
}

describe("when the server is down", () => {
  it("backs off with jitter, keeps its acks, and resumes after a restart", async () => {
    const server = await new Server().start();
    try {
      await server.queue("down", { configuration: { interval: 100 } });
      const producer = new Producer({ url: server.url });
      const lines = [];
      let gate = null;
      const worker = new Worker({
        url: server.url,
        queue: "down",
        maxBackoff: 1000,
        log: (line) => lines.push([Date.now(), line]),
        handler: async (task) => {
          if (task.data.hold) await new Promise((r) => (gate = r));
          return task.data.n;
        },
      });
      const running = worker.run();
      const held = await producer.enqueue("down", { n: 0, hold: true });
      await until(() => gate !== null, 30, "the held task running");
      await server.kill();
      gate(); // finished while the server is down: its ack must survive
      const tries = () => lines.filter(([, l]) => l.includes("no answer from the server")).length;
      await until(() => tries() >= 3, 30, "three tries");
      const before = tries();
      await pause(1000);
      assert.ok(tries() - before <= 4, `backing off, not spinning: ${tries() - before} tries in 1 s`);
      const delays = lines.filter(([, l]) => l.includes("trying again")).map(([, l]) => Number(/in (\d+) ms/.exec(l)[1]));
      assert.ok(delays.every((d) => d <= 1000), `capped: ${delays}`);
      assert.ok(delays[1] > 0 && delays.some((d, i) => i > 0 && d !== delays[i - 1]), `jittered: ${delays}`);
      await server.start(); // the same port and database
      await until(async () => (await producer.get("down", held._id)).status === "done", 30, "the held ack applied");
      const more = await producer.enqueueMany("down", [{ n: 1 }, { n: 2 }]);
      for (const t of more) assert.equal((await producer.get("down", t._id, { wait: 30 })).status, "done");
      assert.equal((await producer.get("down", held._id)).attempts, 1);
      await worker.stop();
      await running;
    } finally {
      await server.close();
    }
  });
});

describe("a setup mistake", () => {
  let server;
  let secret;
  before(async () => {
    const worker = token("worker", ["other", "nosuch"]);
    secret = worker.secret;
    server = await new Server("sqlite", { config: `[queues.squares]\n[queues.other]\n\n${worker.toml}` }).start();
  });
  after(async () => {
    await server?.close();
  });

  for (const [status, tokenOf, queue, message] of [
    [401, () => undefined, "squares", /does not know this token/],
    [403, () => secret, "squares", /may not use the queue squares/],
    [404, () => secret, "nosuch", /has no queue nosuch/],
  ]) {
    it(`stops the worker with a clear error on ${status}`, async () => {
      const lines = [];
      const worker = new Worker({ url: server.url, token: tokenOf(), queue, log: (l) => lines.push(l), handler: () => null });
      await assert.rejects(worker.run(), (error) => error instanceof KatarError && error.status === status && message.test(error.message));
      assert.ok(!lines.some((l) => l.includes("trying again")), lines.join("\n"));
    });
  }
});

describe("a queue deleted under a running worker", () => {
  it("stops it with a 404 error", async () => {
    const server = await new Server().start();
    try {
      await server.queue("gone");
      const worker = new Worker({ url: server.url, queue: "gone", wait: 1, log: quiet, handler: () => null });
      const running = worker.run();
      await pause(300);
      await server.call("DELETE", "/v1/queue/gone");
      await assert.rejects(running, (error) => error.status === 404 && /has no queue gone/.test(error.message));
    } finally {
      await server.close();
    }
  });
});
