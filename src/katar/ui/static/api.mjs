// @ts-check
// Katar's HTTP API as the dashboard uses it: the token, one function per endpoint, and errors
// in plain words. Components call these functions and never write a path themselves.
// The token lives in sessionStorage: it is gone when the tab closes, and no other site can
// read it (the page's Content-Security-Policy lets it talk to this server only).

/** @typedef {import("./rights.mjs").Token} Token */
/** @typedef {"failed" | "queued" | "in progress" | "paused" | "done" | "cancelled"} Status */

/**
 * @typedef {object} Limits
 * @property {number} in_progress
 * @property {number | null} [concurrency]
 * @property {number | null} [tokens]
 * @property {number} [keys_at_limit]
 * @property {number} [keys_rate_limited]
 */

/**
 * @typedef {object} Queue A queue as GET /v1/queues lists it.
 * @property {string} name
 * @property {Partial<Record<Status, number>>} counts
 * @property {number | null} oldest_queued_age seconds
 * @property {Limits | null} limits
 * @property {{paused?: boolean, dead_letter?: string | null, push?: {url: string, timeout?: number} | null, notify?: {url: string, events?: string[]} | null} | null} options
 * @property {string[]} [dead_letter_sources] the queues that send it the tasks that fail for good there
 */

/**
 * @typedef {object} DeadLetter Where a task in a dead-letter queue failed for good.
 * @property {string} queue
 * @property {string | null} error
 * @property {number} attempts
 * @property {string} at
 */

/**
 * @typedef {object} Delivery One attempt of a task.
 * @property {number} attempt
 * @property {string | null} worker
 * @property {string} started_at
 * @property {string | null} ended_at
 * @property {string | null} outcome
 * @property {string | null} error
 */

/**
 * @typedef {object} Task A task as the API answers it (the fields the dashboard shows).
 * @property {string} _id
 * @property {string} queue
 * @property {Status} status
 * @property {number} priority
 * @property {unknown} data
 * @property {number} attempts
 * @property {number | null} max_attempts
 * @property {string | null} error
 * @property {unknown} result
 * @property {string | null} worker
 * @property {string | null} key
 * @property {unknown} progress
 * @property {boolean} cancel_requested
 * @property {string} created_at
 * @property {string} updated_at
 * @property {string | null} run_at
 * @property {string | null} lease_expires_at
 * @property {string | null} schedule
 * @property {string | null} scheduled_for
 * @property {string | null} debounce_key
 * @property {Delivery[]} history
 * @property {string[]} waiting_for
 * @property {Record<string, unknown> | null} after
 * @property {DeadLetter | null} [dead_letter]
 * @property {MessageAttributes | null} [attributes] what a send over the SQS API kept with it
 */

/**
 * @typedef {object} MessageAttributeValue A message attribute as the SQS API writes it.
 * @property {string} DataType "String", "Number", "Binary", with an optional ".suffix"
 * @property {string} [StringValue]
 * @property {string} [BinaryValue] base64
 */

/**
 * @typedef {object} MessageAttributes What a send over the SQS API kept with its task.
 * @property {Record<string, MessageAttributeValue>} [MessageAttributes]
 * @property {Record<string, MessageAttributeValue>} [MessageSystemAttributes]
 * @property {string} [MessageDeduplicationId]
 */

/** @typedef {{tasks: Task[], next: string | null}} TaskPage A page of tasks and the cursor of the next. */

/**
 * @typedef {object} Worker
 * @property {string} name
 * @property {string[]} queues
 * @property {string} last_poll
 * @property {number} in_progress
 */

/**
 * @typedef {object} Schedule
 * @property {string} name
 * @property {string} cron
 * @property {string} timezone
 * @property {string} queue
 * @property {string[]} next_ticks
 * @property {string | null} last_tick
 * @property {string | null} last_task
 * @property {boolean} paused
 * @property {string | null} error
 */

/** @typedef {{enqueued: number, done: number, failed: number}} Rates */
/** @typedef {{interval: number, samples: {at: string, queues: Record<string, Rates>}[]}} Throughput */
/** @typedef {"retry" | "cancel" | "delete"} BulkAction */
/** @typedef {{matched: number, changed: number}} BulkAnswer */
/** @typedef {{matched: number, moved: number, no_origin: number}} RedriveAnswer */

const KEY = "katar.token";

/** @returns {string | null} */
export function getToken() {
  return sessionStorage.getItem(KEY);
}

/** @param {string} token */
export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

/** An answer other than 2xx, or no answer at all (status 0). */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {unknown} [body]
   */
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** @type {Record<number, string>} */
const MEANING = {
  400: "The server could not read the request",
  401: "The token was not accepted",
  403: "This token may not do that",
  404: "Not found",
  409: "Not possible in the task's current state",
  413: "Too large for the server",
  422: "The server refused the input",
  429: "The server is busy; try again in a moment",
  503: "The server's store is unavailable; nothing was changed",
  504: "The server lost its store while saving; the change may or may not have been made",
};

/**
 * @param {number} status
 * @param {any} body
 */
function plain(status, body) {
  const said = body && typeof body.error === "string" ? body.error : "";
  const meaning = MEANING[status] || `The server answered ${status}`;
  return said ? `${meaning}: ${said}` : `${meaning}.`;
}

/**
 * Call the API. `body` is sent as JSON; a string is sent as it is (the enqueue editor's
 * text, so that the server's own validation message comes back). Resolves to the parsed
 * answer (null for an empty one); rejects with an ApiError.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function call(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  /** @type {RequestInit} */
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The server cannot be reached. Is katar serve running?");
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, plain(response.status, parsed), parsed);
    // A token that stopped working (revoked, or the server restarted with other tokens):
    // the app goes back to the sign-in form.
    if (response.status === 401 && token) {
      dispatchEvent(new CustomEvent("katar:unauthorized", { detail: error.message }));
    }
    throw error;
  }
  return parsed;
}

/**
 * `/v1/queue/{queue}...` with the queue's name escaped.
 * @param {string} queue
 */
function queuePath(queue, rest = "") {
  return `/v1/queue/${encodeURIComponent(queue)}${rest}`;
}

/**
 * `/v1/queue/{queue}/tasks/{id}...`, both escaped.
 * @param {string} queue
 * @param {string} id
 */
function taskPath(queue, id, rest = "") {
  return queuePath(queue, `/tasks/${encodeURIComponent(id)}${rest}`);
}

// -- one function per endpoint ---------------------------------------------------------------

/**
 * @typedef {object} PushAnswer One push of a push queue by the server, and its answer.
 * @property {string} at
 * @property {"done" | "failed" | "timeout" | "unreachable" | "refused"} outcome
 * @property {number | null} status the HTTP status; null without an answer
 * @property {number} ms
 * @property {string | null} [error]
 */

/**
 * @typedef {object} PushStatus GET /v1/queue/{queue}/push.
 * @property {string} url
 * @property {number} timeout
 * @property {Record<string, number>} counts this server's pushes by outcome
 * @property {number | null} error_rate of the last pushes, 0 to 1
 * @property {PushAnswer[]} recent newest first
 */

/**
 * @typedef {object} NotifyAnswer One send of a completion-webhook event by the server, and its answer.
 * @property {string} at
 * @property {"sent" | "failed" | "refused"} outcome
 * @property {number | null} status the HTTP status; null without an answer
 * @property {number} ms
 * @property {string} task the id of the task whose end it tells
 * @property {string} type task.done, task.failed, task.cancelled or task.dead_lettered
 * @property {string | null} [error]
 */

/**
 * @typedef {object} NotifyStatus GET /v1/queue/{queue}/notify.
 * @property {string} url
 * @property {string[]} events
 * @property {number} pending the queue's events in the outbox, not yet answered 2xx
 * @property {number} failing of those, the ones whose send failed at least once
 * @property {Record<string, number>} counts this server's sends by outcome
 * @property {number | null} error_rate of the last sends, 0 to 1
 * @property {NotifyAnswer[]} recent newest first
 */

/**
 * @typedef {object} PushSecret A push queue's signing secrets (admin only).
 * @property {string} secret
 * @property {string | null} previous_secret
 * @property {string | null} previous_until
 */

/** GET /v1/token: what the presented token may do. @returns {Promise<Token>} */
export const whoAmI = () => call("GET", "/v1/token");

/** GET /v1/queues. @returns {Promise<{queues: Queue[]}>} */
export const listQueues = () => call("GET", "/v1/queues");

/**
 * PATCH /v1/queue/{queue}: pause or resume it.
 * @param {string} queue
 * @param {boolean} paused
 */
export const setQueuePaused = (queue, paused) => call("PATCH", queuePath(queue), { paused });

/**
 * GET /v1/queue/{queue}/push: a push queue's endpoint and the server's last pushes.
 * @param {string} queue
 * @returns {Promise<PushStatus>}
 */
export const getPushStatus = (queue) => call("GET", queuePath(queue, "/push"));

/**
 * GET /v1/queue/{queue}/notify: a queue's completion-webhook endpoint, its outbox and the
 * server's last sends.
 * @param {string} queue
 * @returns {Promise<NotifyStatus>}
 */
export const getNotifyStatus = (queue) => call("GET", queuePath(queue, "/notify"));

/**
 * POST /v1/queue/{queue}/push/rotate: a new signing secret; the old one signs too for
 * `grace` seconds.
 * @param {string} queue
 * @param {number} grace
 * @returns {Promise<PushSecret>}
 */
export const rotatePushSecret = (queue, grace) =>
  call("POST", queuePath(queue, "/push/rotate"), { grace });

/**
 * GET /v1/throughput over the last `seconds`.
 * @param {number} seconds
 * @returns {Promise<Throughput>}
 */
export const getThroughput = (seconds) => call("GET", `/v1/throughput?seconds=${seconds}`);

/**
 * GET /v1/queue/{queue}/tasks with `params` (see tasks.mjs listParams).
 * @param {string} queue
 * @param {URLSearchParams} params
 * @returns {Promise<TaskPage>}
 */
export const listTasks = (queue, params) => call("GET", queuePath(queue, `/tasks?${params}`));

/**
 * POST /v1/queue/{queue}/tasks with the editor's text as it is.
 * @param {string} queue
 * @param {string} text
 * @returns {Promise<{tasks: {_id: string}[]}>}
 */
export const enqueue = (queue, text) => call("POST", queuePath(queue, "/tasks"), text);

/**
 * POST /v1/queue/{queue}/tasks/bulk; `dryRun` counts without changing anything.
 * @param {string} queue
 * @param {BulkAction} action
 * @param {import("./tasks.mjs").Filter} filter
 * @param {boolean} dryRun
 * @returns {Promise<BulkAnswer>}
 */
export const bulk = (queue, action, filter, dryRun) =>
  call("POST", queuePath(queue, "/tasks/bulk"), dryRun ? { action, filter, dry_run: true } : { action, filter });

/**
 * POST /v1/queue/{queue}/redrive: the queued and failed tasks the filter selects go back to
 * the queues they came from, at once.
 * @param {string} queue
 * @param {import("./tasks.mjs").Filter} filter
 * @returns {Promise<RedriveAnswer>}
 */
export const redrive = (queue, filter) => call("POST", queuePath(queue, "/redrive"), { filter });

/**
 * GET /v1/queue/{queue}/tasks/{id}.
 * @param {string} queue
 * @param {string} id
 * @returns {Promise<Task>}
 */
export const getTask = (queue, id) => call("GET", taskPath(queue, id));

/**
 * PATCH /v1/queue/{queue}/tasks/{id} to a new status: "queued" retries, "cancelled" cancels.
 * @param {string} queue
 * @param {string} id
 * @param {"queued" | "cancelled"} status
 */
export const setTaskStatus = (queue, id, status) => call("PATCH", taskPath(queue, id), { status });

/**
 * PATCH /v1/queue/{queue}/tasks/{id} to "queued" with new data: edit and retry (a paused,
 * queued, failed or cancelled task runs again with it, a fresh set of attempts).
 * @param {string} queue
 * @param {string} id
 * @param {unknown} data
 * @returns {Promise<Task>}
 */
export const retryWithData = (queue, id, data) => call("PATCH", taskPath(queue, id), { status: "queued", data });

/**
 * DELETE /v1/queue/{queue}/tasks/{id}.
 * @param {string} queue
 * @param {string} id
 */
export const deleteTask = (queue, id) => call("DELETE", taskPath(queue, id));

/**
 * GET /v1/queue/{queue}/tasks/{id}/children or /parents, a page at a time.
 * @param {string} queue
 * @param {string} id
 * @param {"children" | "parents"} kind
 * @param {number} limit
 * @param {string | null} after the cursor of the page, null for the first
 * @returns {Promise<TaskPage>}
 */
export function linkedTasks(queue, id, kind, limit, after) {
  const params = new URLSearchParams({ limit: String(limit) });
  if (after) params.set("after", after);
  return call("GET", taskPath(queue, id, `/${kind}?${params}`));
}

/** GET /v1/workers. @returns {Promise<{workers: Worker[]}>} */
export const listWorkers = () => call("GET", "/v1/workers");

/** GET /v1/schedules. @returns {Promise<{schedules: Schedule[]}>} */
export const listSchedules = () => call("GET", "/v1/schedules");

/**
 * PATCH /v1/schedules/{name}: pause or resume it.
 * @param {string} name
 * @param {boolean} paused
 */
export const setSchedulePaused = (name, paused) =>
  call("PATCH", `/v1/schedules/${encodeURIComponent(name)}`, { paused });
