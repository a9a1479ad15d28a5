// @ts-check
// The task vocabulary of the pages: statuses, which actions apply to which tasks, and how a
// queue page's filters become the API's list and bulk parameters. No DOM: tested with
// node --test.

/** @typedef {import("./api.mjs").Status} Status */
/** @typedef {import("./api.mjs").Task} Task */
/** @typedef {import("./api.mjs").BulkAction} BulkAction */
/** @typedef {import("./api.mjs").MessageAttributeValue} MessageAttributeValue */

/**
 * @typedef {object} Filter A bulk action's filter (POST /v1/queue/{queue}/tasks/bulk).
 * @property {string[]} [ids]
 * @property {Status[]} [status]
 * @property {string} [key]
 * @property {string} [worker]
 * @property {string} [error]
 * @property {string} [after] created at or after, ISO 8601
 * @property {string} [before] created before, ISO 8601
 */

/** @type {Status[]} The order of the tabs and of the counts. */
export const STATUSES = ["failed", "queued", "in progress", "paused", "done", "cancelled"];

/** The filters of a queue's page, as named in the page's URL. */
export const FILTERS = ["key", "worker", "error", "from", "to"];

/** The filters passed to the API under the same name. */
const SAME_NAME = ["key", "worker", "error"];

/**
 * The CSS class of a status: "s-in-progress".
 * @param {Status} status
 */
export function statusClass(status) {
  return `s-${status.replace(" ", "-")}`;
}

// A task's record keeps the error of its last failed attempt and the worker that last held
// it. Once it is queued again (retried, or waiting for its next attempt) they belong to an
// earlier attempt, and are shown as such rather than as the task's present state.

/** @param {Task} task */
export const earlierError = (task) => Boolean(task.error) && !["failed", "cancelled"].includes(task.status);

/** @param {Task} task */
export const earlierWorker = (task) => Boolean(task.worker) && ["queued", "paused"].includes(task.status);

/**
 * @typedef {object} Action A bulk action as the queue page offers it.
 * @property {string} verb
 * @property {string} done
 * @property {string} when the tasks it changes, in words
 * @property {Status[]} statuses the tabs that offer it: those of the tasks it applies to
 */

// A bulk action skips the tasks it does not apply to, so "Retry all" on the queued tab could
// only ever say "0 tasks": each tab offers the actions that apply to its tasks.
/** @type {Record<BulkAction, Action>} */
export const ACTIONS = {
  retry: { verb: "Retry", done: "retried", when: "failed or cancelled", statuses: ["failed", "cancelled"] },
  cancel: { verb: "Cancel", done: "cancelled", when: "paused or queued", statuses: ["paused", "queued"] },
  delete: {
    verb: "Delete",
    done: "deleted",
    when: "not in progress",
    statuses: STATUSES.filter((s) => s !== "in progress"),
  },
};

/**
 * The bulk actions a tab offers ("": the tab of every task offers them all).
 * @param {Status | ""} status
 * @returns {[BulkAction, Action][]}
 */
export function offeredActions(status) {
  const all = /** @type {[BulkAction, Action][]} */ (Object.entries(ACTIONS));
  return all.filter(([, spec]) => !status || spec.statuses.includes(status));
}

/**
 * Which of a task's buttons apply to it now.
 * @param {Task} task
 */
export function taskActions(task) {
  const s = task.status;
  return {
    retry: ["failed", "cancelled"].includes(s),
    // Edit and retry: any task a worker does not hold and whose outcome does not stand.
    edit: ["paused", "queued", "failed", "cancelled"].includes(s),
    cancel: ["paused", "queued", "in progress"].includes(s) && !task.cancel_requested,
    delete: s !== "in progress",
  };
}

/**
 * A datetime-local field's value (the reader's time zone) as ISO 8601 in UTC.
 * @param {string} local
 */
function instant(local) {
  return new Date(local).toISOString();
}

/**
 * The filter of a bulk action: the selected `ids`, or the tab's `status` and the page's
 * filters from `query`.
 * @param {Status | ""} status
 * @param {URLSearchParams} query
 * @param {string[] | null} [ids]
 * @returns {Filter}
 */
export function bulkFilter(status, query, ids) {
  /** @type {Filter} */
  const filter = {};
  if (ids) filter.ids = ids;
  if (status) filter.status = [status];
  for (const name of SAME_NAME) {
    const value = query.get(name);
    if (value) filter[/** @type {"key" | "worker" | "error"} */ (name)] = value;
  }
  const from = query.get("from");
  if (from) filter.after = instant(from);
  const to = query.get("to");
  if (to) filter.before = instant(to);
  return filter;
}

/** @type {Status[]} The statuses of the tasks a redrive moves (queued, and failed there). */
export const REDRIVEN = ["queued", "failed"];

/**
 * The filter of a redrive from a queue's page: the tab's status (when a redrive moves such
 * tasks; null when it moves none) and the page's filters; on the "all" tab, the queued and
 * failed tasks.
 * @param {Status | ""} status
 * @param {URLSearchParams} query
 * @returns {Filter | null}
 */
export function redriveFilter(status, query) {
  if (status && !REDRIVEN.includes(status)) return null;
  const filter = bulkFilter(status, query);
  if (!status) filter.status = [...REDRIVEN];
  return filter;
}

/**
 * What a redrive did, in words.
 * @param {import("./api.mjs").RedriveAnswer} answer
 * @param {(n: number) => string} count
 */
export function redriveDone(answer, count) {
  const moved = `${count(answer.moved)} of ${count(answer.matched)} matching tasks moved back to the queues they came from.`;
  return answer.no_origin
    ? `${moved} ${count(answer.no_origin)} stayed: they did not come from another queue.`
    : moved;
}

/**
 * The parameters of GET /v1/queue/{queue}/tasks for a page of the queue's tasks, newest
 * first: the tab's `status`, the filters from `query`, from the `cursor` of the page on.
 * @param {Status | ""} status
 * @param {URLSearchParams} query
 * @param {string | null} cursor
 * @param {number} limit
 */
export function listParams(status, query, cursor, limit) {
  const params = new URLSearchParams({ order: "desc", limit: String(limit) });
  if (status) params.set("status", status);
  for (const name of SAME_NAME) {
    const value = query.get(name);
    if (value) params.set(name, value);
  }
  const from = query.get("from");
  if (from) params.set("created_after", instant(from));
  const to = query.get("to");
  if (to) params.set("created_before", instant(to));
  if (cursor) params.set("after", cursor);
  return params;
}

/**
 * Whether `query` filters the tasks beyond their status.
 * @param {URLSearchParams} query
 */
export const filtered = (query) => FILTERS.some((f) => query.get(f));

/**
 * @typedef {object} AttributeRow One message attribute of a task, as its page lists it.
 * @property {string} name
 * @property {string} type its DataType ("String", "Number", "Binary", with a ".suffix")
 * @property {string} value its StringValue, or its BinaryValue in base64
 * @property {boolean} binary
 * @property {boolean} system a system attribute (AWSTraceHeader), not one the sender named
 */

/**
 * The message attributes a send over the SQS API kept with the task, its own first then the
 * system's, each by name; none for a task enqueued natively.
 * @param {Task} task
 * @returns {AttributeRow[]}
 */
export function messageAttributes(task) {
  const kept = task.attributes;
  if (!kept) return [];
  /**
   * @param {Record<string, MessageAttributeValue> | undefined} attributes
   * @param {boolean} system
   * @returns {AttributeRow[]}
   */
  const rows = (attributes, system) =>
    Object.keys(attributes || {})
      .sort()
      .map((name) => {
        const attribute = /** @type {Record<string, MessageAttributeValue>} */ (attributes)[name];
        const binary = attribute.BinaryValue !== undefined;
        const value = (binary ? attribute.BinaryValue : attribute.StringValue) ?? "";
        return { name, type: attribute.DataType, value, binary, system };
      });
  return [...rows(kept.MessageAttributes, false), ...rows(kept.MessageSystemAttributes, true)];
}
