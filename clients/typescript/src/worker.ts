// Workers: run an async function on the tasks of a queue, as docs/workers.md describes.

import { type Answer, Connection, type ConnectionOptions, KatarError, backoff, isTransient, segment, sleep } from "./http.js";
import type { Ack, Delivery } from "./openapi-types.js";
import type { TraceContext } from "./producer.js";

/** A delivered task, as the server sends it (`_id`, `data`, `attempt`, ...). */
export type Task = Delivery;

/** What a handler gets beside its task. */
export interface TaskContext {
  /** The task's id. */
  id: string;
  /** 1 for the first delivery, 2 for the next... */
  attempt: number;
  /** Aborted when an operator cancels the task, or when the worker stops and its grace is over. */
  signal: AbortSignal;
  /** Reports progress (any JSON value); the next heartbeat carries the latest. */
  progress(value: unknown): void;
  /**
   * The trace context the task was enqueued with (`traceparent`, `tracestate`), when the
   * server delivers one (protocol section 17): hand it to your tracer to link its span.
   */
  trace?: TraceContext;
}

export type Handler = (task: Task, context: TaskContext) => unknown | Promise<unknown>;

/** Throw from a handler: the task failed; try it again later, while attempts remain. */
export class Retry extends Error {
  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "Retry";
  }
}

/** Throw from a handler: the task failed for good; do not try it again. */
export class Fail extends Error {
  constructor(message?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "Fail";
  }
}

export interface WorkerOptions extends ConnectionOptions {
  queue: string;
  handler: Handler;
  /** Tasks run at once (default 1). */
  concurrency?: number;
  /** Seconds an idle poll waits on the server for a task (long poll; default 20, 0 for none). */
  wait?: number;
  /** The worker's name, the same on every poll (default host/pid/random). */
  name?: string;
  /** Ms that `stop()` lets running tasks finish before their signals are aborted and they are abandoned (default 30000). */
  grace?: number;
  /** The longest pause between two tries when the server does not answer, in ms (default 5000). */
  maxBackoff?: number;
  /**
   * Stop gracefully on these signals (Node): `true` for SIGTERM and SIGINT, or a list.
   * A second signal while stopping ends the process at once (exit 1). Default: none.
   */
  stopOn?: boolean | string[];
  /** Where the worker says what happens (default: console.error). */
  log?: (message: string) => void;
}

interface Running {
  task: Task;
  lease: number; // ms
  beatAt: number; // when the last heartbeat (or the delivery) went out
  controller: AbortController;
  progress: { value: unknown; set: boolean };
  cancelled: boolean;
}

const LONG_POLL_MARGIN = 30000; // ms beyond "wait" before a poll counts as unanswered

/**
 * Runs `handler` on the tasks of `queue`: up to `concurrency` at once, taken in batches,
 * long polls while idle, acks carried on the next poll, heartbeats (with progress) every third
 * of the lease, operators' cancels, backoff with jitter while the server does not answer
 * (without losing an ack), and a clean stop. `run()` rejects with a {@link KatarError} on a
 * setup mistake (401, 403, or 404 for the queue): retrying cannot help.
 */
export class Worker {
  readonly queue: string;
  readonly name: string;
  readonly concurrency: number;
  private readonly connection: Connection;
  private readonly handler: Handler;
  private readonly wait: number;
  private readonly grace: number;
  private readonly maxBackoff: number;
  private readonly stopOn: string[];
  private readonly log: (message: string) => void;

  private readonly running = new Map<string, Running>();
  private acks: Ack[] = [];
  private stopping = false;
  private stopDeadline = Infinity;
  private lease = 60000;
  private interval = 30000;
  private failures = 0;
  private inFlight: AbortController | null = null; // the long poll in flight, if any
  private naps = new AbortController(); // aborted to wake the loop
  private done: Promise<void> | null = null;
  private signals: Array<[string, () => void]> = [];

  constructor(options: WorkerOptions) {
    if (!options || typeof options.queue !== "string" || !options.queue) throw new TypeError('katar: Worker needs a "queue"');
    if (typeof options.handler !== "function") throw new TypeError('katar: Worker needs a "handler" function');
    this.connection = new Connection(options);
    this.queue = options.queue;
    this.handler = options.handler;
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? 1));
    this.wait = options.wait ?? 20;
    this.grace = options.grace ?? 30000;
    this.maxBackoff = options.maxBackoff ?? 5000;
    this.name = options.name ?? defaultName();
    this.stopOn = options.stopOn === true ? ["SIGTERM", "SIGINT"] : Array.isArray(options.stopOn) ? options.stopOn : [];
    this.log = options.log ?? ((message) => console.error(message));
  }

  /** Resolves once `stop()` has drained the worker: running tasks finished, their acks sent. */
  run(): Promise<void> {
    if (!this.done) {
      this.listen();
      this.done = this.loop().finally(() => this.unlisten());
    }
    return this.done;
  }

  /**
   * Takes no more tasks, lets the running ones finish (within `grace`), sends their acks.
   * A long poll in flight is cut short. Resolves when `run()` does (at once if it never ran).
   */
  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.stopDeadline = Date.now() + this.grace;
      this.inFlight?.abort();
      this.wake();
    }
    return this.done ? this.done.catch(() => undefined) : Promise.resolve();
  }

  // -- the loop ----------------------------------------------------------------------------

  private async loop(): Promise<void> {
    if (this.stopping) return;
    const configured = await this.readConfiguration();
    if (!configured) return;
    this.log(`katar worker ${this.name} ready on ${this.queue}: ${this.concurrency} task(s) at once, lease ${this.lease} ms`);
    // After no answer the last poll may have claimed tasks (they come back when their lease
    // runs out): until an answer comes, its acks are sent again with "max": 0, so that
    // nothing is claimed twice. A lost poll that carried no ack is simply sent again.
    let resending = false;
    for (;;) {
      let now = Date.now();
      if (this.stopping) {
        if (this.running.size > 0 && now >= this.stopDeadline) this.abandon();
        if (this.running.size === 0 && this.acks.length === 0) return;
      }
      const beats = [...this.running.values()].filter((r) => !r.cancelled && now - r.beatAt >= r.lease / 3);
      const free = this.stopping || resending ? 0 : this.concurrency - this.running.size;
      if (this.acks.length === 0 && beats.length === 0 && free === 0) {
        await this.nap(Math.min(this.untilNextBeat(now), this.stopping ? this.stopDeadline - now : 1000));
        continue;
      }
      // Long-poll only while nothing runs: a long poll in flight holds back the acks of tasks
      // that finish meanwhile, and the running tasks' heartbeats, until it is answered.
      const wait = this.running.size === 0 && !this.stopping && !resending ? this.wait : 0;
      const sentAcks = this.acks.slice();
      const sent: Ack[] = [...sentAcks, ...beats.map((r) => heartbeat(r))];
      const controller = new AbortController();
      if (wait) this.inFlight = controller;
      const answer = await this.connection.send(`/v1/queue/${segment(this.queue)}`, {
        method: "POST",
        body: { tasks: sent, max: free, wait, worker: this.name },
        timeout: wait * 1000 + LONG_POLL_MARGIN,
        signal: controller.signal,
      });
      this.inFlight = null;
      now = Date.now();
      const { status, body } = answer;
      if (status === 0 && this.stopping && controller.signal.aborted) {
        resending = sentAcks.length > 0; // cut short by stop(): resend its acks, if any
        continue;
      }
      if (isTransient(status)) {
        resending = sentAcks.length > 0 || resending; // keep the acks; "max": 0 until answered
        if (this.stopping && this.failures >= 5) {
          // Their tasks are not lost: their leases run out and they are delivered again.
          this.log(`stopping without sending ${this.acks.length} ack(s): no answer from ${this.connection.url}`);
          this.abandon();
          return;
        }
        await this.backOff(answer);
        continue;
      }
      if (status !== 200 && status !== 204) {
        // One faulty ack: the answer's "ack" is its index in the "tasks" sent, and nothing of
        // the request was applied. Drop it (a heartbeat comes again) and send the others.
        // A 404 without "ack" means no queue: a setup mistake, as 401 and 403.
        const index = body && Number.isInteger(body.ack) ? (body.ack as number) : -1;
        if (index < 0) this.fatal(answer);
        this.log(`the server rejected ${index < 0 ? "the acks" : `ack ${index}`} (${status}): ${answer.text}`);
        const dropped = index < 0 ? sentAcks : [sent[index]];
        this.acks = this.acks.filter((a) => !dropped.includes(a));
        // A rejected heartbeat: not again before the next is due.
        if (index >= sentAcks.length) beats[index - sentAcks.length].beatAt = now;
        continue;
      }
      this.failures = 0;
      resending = false;
      this.acks = this.acks.filter((a) => !sentAcks.includes(a)); // answered; new ones may have come
      for (const r of beats) r.beatAt = now;
      const delivered: Task[] = status === 200 && body ? (body.tasks ?? []) : [];
      for (const id of (status === 200 && body?.cancel) || []) this.cancelled(String(id));
      for (const task of delivered) this.start(task);
      if (delivered.length === 0 && this.running.size > 0 && this.acks.length === 0 && !this.stopping) {
        await this.nap(Math.min(this.untilNextBeat(Date.now()), this.interval)); // busy, nothing new
      }
    }
  }

  /** GET /v1/queue/{queue}: the poll interval and the lease; false when stopped meanwhile. */
  private async readConfiguration(): Promise<boolean> {
    for (;;) {
      const controller = new AbortController();
      this.inFlight = controller;
      const answer = await this.connection.send(`/v1/queue/${segment(this.queue)}`, { timeout: 30000, signal: controller.signal });
      this.inFlight = null;
      if (answer.status === 200) {
        const lease = Number(answer.headers.get("Katar-Lease-Timeout"));
        if (lease > 0) this.lease = lease;
        const interval = Number(answer.body?.configuration?.interval);
        if (interval >= 0) this.interval = interval;
        this.failures = 0;
        return true;
      }
      if (this.stopping) return false;
      if (!isTransient(answer.status)) this.fatal(answer);
      await this.backOff(answer);
      if (this.stopping) return false;
    }
  }

  private start(task: Task): void {
    const entry: Running = {
      task,
      lease: task.timeout ?? this.lease,
      beatAt: Date.now(),
      controller: new AbortController(),
      progress: { value: undefined, set: false },
      cancelled: false,
    };
    this.running.set(task._id, entry);
    const context: TaskContext = {
      id: task._id,
      attempt: task.attempt ?? 1,
      signal: entry.controller.signal,
      progress: (value) => {
        entry.progress = { value, set: true };
      },
    };
    const trace = (task as { trace?: unknown }).trace;
    if (trace && typeof trace === "object") context.trace = trace as TraceContext;
    void (async () => {
      let ack: Ack;
      try {
        const result = await this.handler(task, context);
        ack = { _id: task._id, status: "done", attempt: task.attempt ?? 1, result: result === undefined ? null : result };
        JSON.stringify(ack); // a result that is not JSON fails the task instead of the loop
      } catch (error) {
        ack = failure(task, error);
        if (!entry.cancelled && !entry.controller.signal.aborted) this.log(`task ${task._id} failed (attempt ${ack.attempt}): ${ack.error}`);
      }
      // An abandoned or cancelled task gets no ack: the server has ended it, or will deliver it again.
      if (this.running.get(task._id) === entry) {
        this.running.delete(task._id);
        if (!entry.cancelled) this.acks.push(ack);
      }
      this.wake();
    })();
  }

  private cancelled(id: string): void {
    const entry = this.running.get(id);
    if (entry) {
      entry.cancelled = true;
      entry.controller.abort(new KatarError(`task ${id} was cancelled by an operator`, 0));
    }
    this.log(`task ${id} was cancelled by an operator`);
  }

  /** Past the grace period: abort the handlers' signals and forget their tasks. */
  private abandon(): void {
    if (this.running.size === 0) return;
    this.log(`grace period over: abandoning ${this.running.size} task(s); the server delivers them again when their lease runs out`);
    for (const entry of this.running.values()) entry.controller.abort(new KatarError("the worker is stopping", 0));
    this.running.clear();
  }

  private untilNextBeat(now: number): number {
    let next = Infinity;
    for (const r of this.running.values()) if (!r.cancelled) next = Math.min(next, r.beatAt + r.lease / 3 - now);
    return Math.max(0, next);
  }

  private async backOff(answer: Answer): Promise<void> {
    this.failures += 1;
    const delay = backoff(this.failures, this.maxBackoff);
    const why = answer.status === 0 ? answer.text : `${answer.status} ${answer.text}`;
    this.log(`no answer from the server (${why}) at ${this.connection.url}; trying again in ${delay} ms`);
    await this.nap(delay);
  }

  private fatal(answer: Answer): never {
    const what: Record<number, string> = {
      401: "the server does not know this token: give the worker a valid one",
      403: `this token may not use the queue ${this.queue}`,
      404: `the server has no queue ${this.queue}: create it, or fix the name`,
    };
    const reason = what[answer.status] ?? "the server rejected the request";
    for (const entry of this.running.values()) entry.controller.abort(new KatarError("the worker is stopping", 0));
    this.running.clear();
    throw new KatarError(`${reason} (${answer.status} ${answer.text})`, answer.status, answer.body && typeof answer.body === "object" ? answer.body : null);
  }

  private nap(ms: number): Promise<void> {
    return sleep(Math.min(Math.max(0, ms), 60000), this.naps.signal);
  }

  private wake(): void {
    this.naps.abort();
    this.naps = new AbortController();
  }

  private listen(): void {
    const proc = (globalThis as { process?: NodeProcess }).process;
    if (!proc?.on || this.stopOn.length === 0) return;
    for (const name of this.stopOn) {
      const handler = () => {
        if (this.stopping) {
          this.log(`second ${name}: exiting at once`);
          proc.exit?.(1);
        }
        this.log(`${name}: stopping (finishing ${this.running.size} task(s))`);
        void this.stop();
      };
      proc.on(name, handler);
      this.signals.push([name, handler]);
    }
  }

  private unlisten(): void {
    const proc = (globalThis as { process?: NodeProcess }).process;
    for (const [name, handler] of this.signals) proc?.off?.(name, handler);
    this.signals = [];
  }
}

interface NodeProcess {
  on?(event: string, listener: () => void): unknown;
  off?(event: string, listener: () => void): unknown;
  exit?(code: number): never;
  pid?: number;
}

function heartbeat(entry: Running): Ack {
  const beat: Ack = { _id: entry.task._id, status: "in progress", attempt: entry.task.attempt ?? 1 };
  if (entry.progress.set) beat.progress = entry.progress.value;
  return beat;
}

function failure(task: Task, error: unknown): Ack {
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  // The server refuses NUL in text: an odd message must not get the ack refused.
  const ack: Ack = { _id: task._id, status: "failed", attempt: task.attempt ?? 1, error: message.replace(/\u0000/g, "\\x00") };
  if (error instanceof Retry || error instanceof Fail) ack.retry = error instanceof Retry;
  return ack;
}

function defaultName(): string {
  const proc = (globalThis as { process?: NodeProcess & { env?: Record<string, string | undefined> } }).process;
  const host = proc?.env?.HOSTNAME ?? "js";
  const pid = proc?.pid ?? 0;
  return `${host}/node-${pid}-${Math.random().toString(36).slice(2, 8)}`;
}
