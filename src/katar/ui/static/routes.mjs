// @ts-check
// The dashboard's addresses, in the URL's fragment (the server serves one page): "#/" the
// queues, "#/queue/NAME?status=failed&key=..." a queue's tasks, "#/task/QUEUE/ID" a task,
// "#/workers", "#/schedules". No DOM: tested with node --test.

/** @typedef {{parts: string[], query: URLSearchParams}} Route */

/**
 * @typedef {{page: "queues"}
 *   | {page: "queue", name: string, query: URLSearchParams}
 *   | {page: "task", queue: string, id: string}
 *   | {page: "workers"}
 *   | {page: "schedules"}} Place
 */

/**
 * A fragment ("#/queue/emails?status=failed") as its decoded path segments and its query.
 * @param {string} hash
 * @returns {Route}
 */
export function parseHash(hash) {
  const raw = hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

/**
 * The fragment of `parts` (each escaped) and `query` (empty values left out).
 * @param {string[]} parts
 * @param {Record<string, string>} [query]
 */
export function link(parts, query) {
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString() : "";
  return `#/${parts.map(encodeURIComponent).join("/")}${q ? `?${q}` : ""}`;
}

/**
 * A queue's page, with its filters.
 * @param {string} name
 * @param {Record<string, string>} [query]
 */
export const queueLink = (name, query) => link(["queue", name], query);

/**
 * A task's page.
 * @param {string} queue
 * @param {string} id
 */
export const taskLink = (queue, id) => link(["task", queue, id]);

/**
 * The page a route shows; the queues for any address the dashboard does not know.
 * @param {Route} route
 * @returns {Place}
 */
export function place(route) {
  const [first, second, third] = route.parts;
  if (first === "queue" && second) return { page: "queue", name: second, query: route.query };
  if (first === "task" && second && third) return { page: "task", queue: second, id: third };
  if (first === "workers") return { page: "workers" };
  if (first === "schedules") return { page: "schedules" };
  return { page: "queues" };
}

/**
 * The item of the main menu a place belongs to: a queue and a task are under the queues.
 * @param {Place} where
 * @returns {"queues" | "workers" | "schedules"}
 */
export function section(where) {
  return where.page === "workers" || where.page === "schedules" ? where.page : "queues";
}
