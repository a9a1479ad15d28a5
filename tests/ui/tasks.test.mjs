// @ts-check
// The tasks' statuses, actions and filters as the pages use them (src/katar/ui/static/tasks.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  STATUSES,
  bulkFilter,
  earlierError,
  earlierWorker,
  filtered,
  listParams,
  messageAttributes,
  offeredActions,
  redriveDone,
  redriveFilter,
  statusClass,
  taskActions,
} from "../../src/katar/ui/static/tasks.mjs";

/** @typedef {import("../../src/katar/ui/static/api.mjs").Task} Task */

/**
 * A task with `fields`; the rest as a new task has them.
 * @param {Partial<Task>} fields
 * @returns {Task}
 */
function task(fields) {
  return /** @type {Task} */ ({ _id: "1", queue: "q", status: "queued", error: null, worker: null, cancel_requested: false, ...fields });
}

test("a status's CSS class has no space", () => {
  assert.equal(statusClass("in progress"), "s-in-progress");
  assert.equal(statusClass("failed"), "s-failed");
});

test("each tab offers the bulk actions that apply to its tasks", () => {
  const offered = (/** @type {any} */ status) => offeredActions(status).map(([action]) => action);
  assert.deepEqual(offered(""), ["retry", "cancel", "delete"]);
  assert.deepEqual(offered("failed"), ["retry", "delete"]);
  assert.deepEqual(offered("cancelled"), ["retry", "delete"]);
  assert.deepEqual(offered("queued"), ["cancel", "delete"]);
  assert.deepEqual(offered("paused"), ["cancel", "delete"]);
  assert.deepEqual(offered("done"), ["delete"]);
  assert.deepEqual(offered("in progress"), []);
  for (const status of STATUSES) assert.ok(Array.isArray(offeredActions(status)));
});

test("a task's buttons apply to its status", () => {
  assert.deepEqual(taskActions(task({ status: "failed" })), { retry: true, edit: true, cancel: false, delete: true });
  assert.deepEqual(taskActions(task({ status: "queued" })), { retry: false, edit: true, cancel: true, delete: true });
  assert.deepEqual(taskActions(task({ status: "paused" })), { retry: false, edit: true, cancel: true, delete: true });
  assert.deepEqual(taskActions(task({ status: "in progress" })), { retry: false, edit: false, cancel: true, delete: false });
  assert.deepEqual(taskActions(task({ status: "in progress", cancel_requested: true })), {
    retry: false,
    edit: false,
    cancel: false,
    delete: false,
  });
  assert.deepEqual(taskActions(task({ status: "done" })), { retry: false, edit: false, cancel: false, delete: true });
});

test("an error or a worker of a task queued again belongs to an earlier attempt", () => {
  assert.equal(earlierError(task({ status: "queued", error: "boom" })), true);
  assert.equal(earlierError(task({ status: "done", error: "boom" })), true);
  assert.equal(earlierError(task({ status: "failed", error: "boom" })), false);
  assert.equal(earlierError(task({ status: "cancelled", error: "boom" })), false);
  assert.equal(earlierError(task({ status: "queued" })), false);
  assert.equal(earlierWorker(task({ status: "queued", worker: "w" })), true);
  assert.equal(earlierWorker(task({ status: "paused", worker: "w" })), true);
  assert.equal(earlierWorker(task({ status: "in progress", worker: "w" })), false);
  assert.equal(earlierWorker(task({ status: "queued" })), false);
});

test("the page's filters become the list's parameters, newest first, from the cursor on", () => {
  const query = new URLSearchParams({ status: "failed", key: "k", worker: "", error: "SMTP", from: "2026-12-01T10:00" });
  const params = listParams("failed", query, "c1", 50);
  assert.deepEqual(Object.fromEntries(params), {
    order: "desc",
    limit: "50",
    status: "failed",
    key: "k",
    error: "SMTP",
    created_after: new Date("2026-12-01T10:00").toISOString(),
    after: "c1",
  });
  assert.equal(listParams("", new URLSearchParams(), null, 20).toString(), "order=desc&limit=20");
  const to = listParams("", new URLSearchParams({ to: "2026-12-02T00:00" }), null, 20);
  assert.equal(to.get("created_before"), new Date("2026-12-02T00:00").toISOString());
});

test("a bulk action's filter: the tab and the page's filters, or the selected tasks", () => {
  const query = new URLSearchParams({ key: "k", to: "2026-12-02T00:00", status: "ignored" });
  assert.deepEqual(bulkFilter("failed", query), {
    status: ["failed"],
    key: "k",
    before: new Date("2026-12-02T00:00").toISOString(),
  });
  assert.deepEqual(bulkFilter("", new URLSearchParams(), ["3", "4"]), { ids: ["3", "4"] });
  assert.deepEqual(bulkFilter("", new URLSearchParams()), {});
});

test("a page is filtered by any filter but its status", () => {
  assert.equal(filtered(new URLSearchParams({ status: "failed" })), false);
  assert.equal(filtered(new URLSearchParams({ worker: "w" })), true);
  assert.equal(filtered(new URLSearchParams({ key: "" })), false);
});

test("a redrive's filter: the queued and failed tasks, or the tab's when it has such tasks", () => {
  const query = new URLSearchParams({ error: "550", key: "acme" });
  assert.deepEqual(redriveFilter("", query), { status: ["queued", "failed"], key: "acme", error: "550" });
  assert.deepEqual(redriveFilter("failed", new URLSearchParams()), { status: ["failed"] });
  assert.equal(redriveFilter("done", query), null);
  assert.equal(redriveFilter("in progress", query), null);
});

test("what a redrive did, in words", () => {
  const n = (/** @type {number} */ x) => String(x);
  assert.equal(
    redriveDone({ matched: 3, moved: 3, no_origin: 0 }, n),
    "3 of 3 matching tasks moved back to the queues they came from.",
  );
  assert.equal(
    redriveDone({ matched: 3, moved: 2, no_origin: 1 }, n),
    "2 of 3 matching tasks moved back to the queues they came from. 1 stayed: they did not come from another queue.",
  );
});

test("a task's message attributes: its own by name, then the system's; none for a native task", () => {
  assert.deepEqual(messageAttributes(task({})), []);
  assert.deepEqual(messageAttributes(task({ attributes: null })), []);
  const sent = task({
    attributes: {
      MessageAttributes: {
        "price.raw": { DataType: "Binary", BinaryValue: "AAH/" },
        SellerName: { DataType: "String", StringValue: "Example Store" },
        cents: { DataType: "Number.int", StringValue: "1250" },
      },
      MessageSystemAttributes: { AWSTraceHeader: { DataType: "String", StringValue: "Root=1-5759e988-bd862e3fe" } },
      MessageDeduplicationId: "d-1",
    },
  });
  assert.deepEqual(messageAttributes(sent), [
    { name: "SellerName", type: "String", value: "Example Store", binary: false, system: false },
    { name: "cents", type: "Number.int", value: "1250", binary: false, system: false },
    { name: "price.raw", type: "Binary", value: "AAH/", binary: true, system: false },
    { name: "AWSTraceHeader", type: "String", value: "Root=1-5759e988-bd862e3fe", binary: false, system: true },
  ]);
  // A send with only a deduplication id (a FIFO queue) has no attributes to list.
  assert.deepEqual(messageAttributes(task({ attributes: { MessageDeduplicationId: "d-2" } })), []);
});
