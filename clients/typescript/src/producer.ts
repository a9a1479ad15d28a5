// Producers: put tasks on queues, read them, wait for their outcome, cancel them.

import { Connection, type ConnectionOptions, KatarError, backoff, errorOf, segment, sleep } from "./http.js";
import type { NewTask, TaskRecord, Tasks } from "./openapi-types.js";

/** The W3C trace context of the caller, sent as the `traceparent`/`tracestate` headers. */
export interface TraceContext {
  traceparent?: string;
  tracestate?: string;
}

/**
 * The options of one enqueue: a task's own fields as the server's OpenAPI document types them
 * (`priority`, `delay`, `run_at`, `status`, `key`, `timeout`, `max_attempts`, `expires_in`,
 * `unique_key`, `unique_for`, `after`), plus how to send the request.
 */
export interface EnqueueOptions extends Omit<NewTask, "data" | "run_at">, TraceContext {
  /** When the task may run, instead of `delay`: a Date, or an ISO 8601 string. */
  run_at?: Date | string | null;
  /**
   * Makes the enqueue safe to repeat: the same key on the same queue within 24 hours creates
   * nothing and answers what the first answered. Default: a fresh key per call, so that the
   * call's own retries never create a task twice.
   */
  idempotencyKey?: string;
  /** Tries after no answer, a 5xx, a 408 or a 429 (default: the producer's `retries`). */
  retries?: number;
  /** Cuts the call short (it then rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** A task of a batch: its data, and optionally its own fields. */
export type BatchTask = NewTask;

export interface ProducerOptions extends ConnectionOptions {
  /** Tries after no answer, a 5xx, a 408 or a 429, with backoff (default 5). */
  retries?: number;
  /** The longest pause between two tries, in ms (default 5000). */
  maxBackoff?: number;
}

export interface ListOptions {
  status?: TaskRecord["status"];
  limit?: number;
  /** The cursor of the previous page (`next`). */
  after?: string;
}

/** A page of tasks and the cursor of the next one (null at the end). */
export interface TaskPage {
  tasks: TaskRecord[];
  next: string | null;
}

export class Producer {
  private readonly connection: Connection;
  private readonly retries: number;
  private readonly maxBackoff: number;

  constructor(options: ProducerOptions) {
    this.connection = new Connection(options);
    this.retries = options.retries ?? 5;
    this.maxBackoff = options.maxBackoff ?? 5000;
  }

  get url(): string {
    return this.connection.url;
  }

  /** Enqueues one task; resolves to its record (the existing task's, `duplicate` true, when its `unique_key` was taken). */
  async enqueue(queue: string, data: unknown, options: EnqueueOptions = {}): Promise<TaskRecord> {
    const { task, request } = split(options);
    const [record] = await this.post(queue, { ...task, data }, request);
    return record as TaskRecord;
  }

  /**
   * Enqueues many tasks in one request, all created or none; resolves to their records, in
   * order. Each item is a task's data; with `asTasks: true`, each item is a whole task
   * (`{data, priority, ...}`). `options` apply to every task that does not set them itself.
   */
  async enqueueMany(queue: string, items: unknown[], options: EnqueueOptions & { asTasks?: boolean } = {}): Promise<TaskRecord[]> {
    if (!Array.isArray(items) || items.length === 0) throw new TypeError("katar: enqueueMany needs a non-empty array");
    const { asTasks, ...rest } = options;
    const { task, request } = split(rest);
    const tasks = items.map((item) => (asTasks ? { ...task, ...(item as NewTask) } : { ...task, data: item }));
    return this.post(queue, { tasks }, request);
  }

  /** The task's record; with `wait` (seconds), waits up to that long for it to end (done, failed or cancelled). */
  async get(queue: string, id: string, options: { wait?: number; signal?: AbortSignal } = {}): Promise<TaskRecord> {
    const query = options.wait ? `?wait=${options.wait}` : "";
    return this.connection.call(`/v1/queue/${segment(queue)}/tasks/${segment(id)}${query}`, {
      signal: options.signal,
      timeout: options.wait ? options.wait * 1000 + 30000 : 30000,
    });
  }

  /**
   * Cancels a task: at once when it is paused or queued; a task in progress gets
   * `cancel_requested` and its worker hears of it at its next heartbeat (the record then
   * still says `in progress`). A task already ended: a {@link KatarError} with status 409.
   */
  async cancel(queue: string, id: string): Promise<TaskRecord> {
    return this.connection.call(`/v1/queue/${segment(queue)}/tasks/${segment(id)}`, { method: "PATCH", body: { status: "cancelled" }, timeout: 30000 });
  }

  /** A page of the queue's tasks, oldest first; pass `after: page.next` for the next page. */
  async list(queue: string, options: ListOptions = {}): Promise<TaskPage> {
    const query = new URLSearchParams();
    if (options.status) query.set("status", options.status);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    if (options.after) query.set("after", options.after);
    const text = query.toString();
    const page: Tasks = await this.connection.call(`/v1/queue/${segment(queue)}/tasks${text ? `?${text}` : ""}`, { timeout: 30000 });
    return { tasks: page.tasks, next: page.next ?? null };
  }

  private async post(queue: string, body: unknown, request: RequestPart): Promise<TaskRecord[]> {
    const headers: Record<string, string> = { "Idempotency-Key": request.idempotencyKey ?? (await uuid()) };
    if (request.traceparent) headers.traceparent = request.traceparent;
    if (request.tracestate) headers.tracestate = request.tracestate;
    const path = `/v1/queue/${segment(queue)}/tasks`;
    const retries = request.retries ?? this.retries;
    for (let failures = 0; ; ) {
      request.signal?.throwIfAborted();
      const answer = await this.connection.send(path, { method: "POST", body, headers, timeout: 60000, signal: request.signal });
      if (answer.status === 200 || answer.status === 201) return (answer.body as Tasks).tasks;
      const error = errorOf(answer, `POST ${path}`, this.url);
      request.signal?.throwIfAborted();
      // The same body with the same key: the server creates the tasks at most once.
      if (!error.transient || failures >= retries) throw error;
      failures += 1;
      await sleep(backoff(failures, this.maxBackoff), request.signal);
    }
  }
}

interface RequestPart extends TraceContext {
  idempotencyKey?: string;
  retries?: number;
  signal?: AbortSignal;
}

function split(options: EnqueueOptions): { task: Omit<NewTask, "data">; request: RequestPart } {
  const { idempotencyKey, retries, signal, traceparent, tracestate, run_at, ...task } = options;
  const fields: Omit<NewTask, "data"> = { ...task };
  if (run_at !== undefined) fields.run_at = run_at instanceof Date ? run_at.toISOString() : run_at;
  return { task: fields, request: { idempotencyKey, retries, signal, traceparent, tracestate } };
}

async function uuid(): Promise<string> {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  // Node 18 without the global: its crypto module has the same function.
  const module: { randomUUID: () => string } = await import("node:crypto" as string);
  return module.randomUUID();
}

export { KatarError };
