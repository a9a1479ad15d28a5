// @ts-check
// What the signed-in token may do, from GET /v1/token: the one place that answers "may this
// token do X", so that the dashboard offers only what the server would accept. No DOM:
// tested with node --test.

/** @typedef {"worker" | "producer" | "admin"} Role */

/**
 * @typedef {object} Token What GET /v1/token answers.
 * @property {Role} role
 * @property {string[]} queues the queues it may use; ["*"]: every queue
 * @property {string} name its name in the server's configuration ("" if none)
 * @property {boolean} auth whether the server asks for tokens at all
 */

/** Roles are ordered: each may do what the ones before it may. */
const RANK = { worker: 0, producer: 1, admin: 2 };

/** What the dashboard offers, and the least role it offers it to. */
export const NEEDS = /** @satisfies {Readonly<Record<string, Role>>} */ (Object.freeze({
  /** Pause or resume a queue. */
  pauseQueue: "admin",
  /** Enqueue a task from the queue's page. */
  enqueue: "admin",
  /** Retry, cancel or delete a task, one at a time or in bulk, and purge a queue. */
  changeTasks: "admin",
  /** Pause or resume a schedule. */
  pauseSchedule: "admin",
  /** Give a push queue a new signing secret. */
  rotateSecret: "admin",
}));

/** @typedef {keyof typeof NEEDS} Right */

/**
 * Whether `who` may do `what`.
 * @param {Token} who
 * @param {Right} what
 */
export function may(who, what) {
  return RANK[who.role] >= RANK[NEEDS[what]];
}

/**
 * The token in words, as the page's header shows it: its role ("read-only" when the
 * dashboard offers it no action) and the queues it covers.
 * @param {Token} who
 */
export function describe(who) {
  const acts = /** @type {Right[]} */ (Object.keys(NEEDS)).some((what) => may(who, what));
  const role = acts ? who.role : `${who.role}, read-only`;
  const scope = who.queues.includes("*") ? "every queue" : who.queues.join(", ");
  return { role, scope };
}
