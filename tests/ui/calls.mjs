// @ts-check
// Every endpoint function of api.mjs, called once: the route it must reach (as the server's
// OpenAPI document names it) and the path it must send, escapes and all. api.test.mjs checks
// the requests; tests/ui/test_dashboard.py checks that each route is one the server has.
import { pathToFileURL } from "node:url";
import * as api from "../../src/katar/ui/static/api.mjs";

/** @typedef {{name: string, call: () => Promise<unknown>, route: string, path: string, body?: unknown}} Call */

/** @type {Call[]} */
export const CALLS = [
  { name: "whoAmI", call: () => api.whoAmI(), route: "GET /v1/token", path: "/v1/token" },
  { name: "listQueues", call: () => api.listQueues(), route: "GET /v1/queues", path: "/v1/queues" },
  {
    name: "setQueuePaused",
    call: () => api.setQueuePaused("a/b", true),
    route: "PATCH /v1/queue/{queue}",
    path: "/v1/queue/a%2Fb",
    body: { paused: true },
  },
  {
    name: "getThroughput",
    call: () => api.getThroughput(600),
    route: "GET /v1/throughput",
    path: "/v1/throughput?seconds=600",
  },
  {
    name: "listTasks",
    call: () => api.listTasks("q 1", new URLSearchParams({ order: "desc", status: "in progress" })),
    route: "GET /v1/queue/{queue}/tasks",
    path: "/v1/queue/q%201/tasks?order=desc&status=in+progress",
  },
  {
    name: "enqueue",
    call: () => api.enqueue("q", '{"data": 1}'),
    route: "POST /v1/queue/{queue}/tasks",
    path: "/v1/queue/q/tasks",
    body: { data: 1 },
  },
  {
    name: "bulk",
    call: () => api.bulk("q", "retry", { status: ["failed"] }, true),
    route: "POST /v1/queue/{queue}/tasks/bulk",
    path: "/v1/queue/q/tasks/bulk",
    body: { action: "retry", filter: { status: ["failed"] }, dry_run: true },
  },
  {
    name: "redrive",
    call: () => api.redrive("q.dead", { status: ["failed"] }),
    route: "POST /v1/queue/{queue}/redrive",
    path: "/v1/queue/q.dead/redrive",
    body: { filter: { status: ["failed"] } },
  },
  {
    name: "getTask",
    call: () => api.getTask("q", "7/8"),
    route: "GET /v1/queue/{queue}/tasks/{id}",
    path: "/v1/queue/q/tasks/7%2F8",
  },
  {
    name: "setTaskStatus",
    call: () => api.setTaskStatus("q", "7", "queued"),
    route: "PATCH /v1/queue/{queue}/tasks/{id}",
    path: "/v1/queue/q/tasks/7",
    body: { status: "queued" },
  },
  {
    name: "retryWithData",
    call: () => api.retryWithData("q", "7", { to: "b" }),
    route: "PATCH /v1/queue/{queue}/tasks/{id}",
    path: "/v1/queue/q/tasks/7",
    body: { status: "queued", data: { to: "b" } },
  },
  {
    name: "deleteTask",
    call: () => api.deleteTask("q", "7"),
    route: "DELETE /v1/queue/{queue}/tasks/{id}",
    path: "/v1/queue/q/tasks/7",
  },
  {
    name: "linkedTasks",
    call: () => api.linkedTasks("q", "7", "children", 20, "c1"),
    route: "GET /v1/queue/{queue}/tasks/{id}/children",
    path: "/v1/queue/q/tasks/7/children?limit=20&after=c1",
  },
  {
    name: "linkedTasks",
    call: () => api.linkedTasks("q", "7", "parents", 20, null),
    route: "GET /v1/queue/{queue}/tasks/{id}/parents",
    path: "/v1/queue/q/tasks/7/parents?limit=20",
  },
  {
    name: "getPushStatus",
    call: () => api.getPushStatus("a/b"),
    route: "GET /v1/queue/{queue}/push",
    path: "/v1/queue/a%2Fb/push",
  },
  {
    name: "getNotifyStatus",
    call: () => api.getNotifyStatus("a/b"),
    route: "GET /v1/queue/{queue}/notify",
    path: "/v1/queue/a%2Fb/notify",
  },
  {
    name: "rotatePushSecret",
    call: () => api.rotatePushSecret("hooks", 3600),
    route: "POST /v1/queue/{queue}/push/rotate",
    path: "/v1/queue/hooks/push/rotate",
    body: { grace: 3600 },
  },
  { name: "listWorkers", call: () => api.listWorkers(), route: "GET /v1/workers", path: "/v1/workers" },
  { name: "listSchedules", call: () => api.listSchedules(), route: "GET /v1/schedules", path: "/v1/schedules" },
  {
    name: "setSchedulePaused",
    call: () => api.setSchedulePaused("nightly report", false),
    route: "PATCH /v1/schedules/{schedule}",
    path: "/v1/schedules/nightly%20report",
    body: { paused: false },
  },
];

/** The exports of api.mjs that are not endpoints. */
export const NOT_ENDPOINTS = ["getToken", "setToken", "clearToken", "ApiError"];

// `node tests/ui/calls.mjs` prints the routes, for the Python test to compare with the server's.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(CALLS.map((c) => c.route)));
}
