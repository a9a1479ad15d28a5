// @ts-check
// The dashboard's addresses (src/katar/ui/static/routes.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { link, parseHash, place, queueLink, section, taskLink } from "../../src/katar/ui/static/routes.mjs";

test("an address is read as its decoded segments and its query", () => {
  const route = parseHash("#/queue/a%2Fb%20c?status=in+progress&key=k1");
  assert.deepEqual(route.parts, ["queue", "a/b c"]);
  assert.equal(route.query.get("status"), "in progress");
  assert.equal(route.query.get("key"), "k1");
});

test("the root, an empty fragment and a missing slash are the same address", () => {
  for (const hash of ["", "#", "#/", "#queue/x"]) {
    assert.equal(parseHash(hash).query.toString(), "", hash);
  }
  assert.deepEqual(parseHash("#queue/x").parts, ["queue", "x"]);
  assert.deepEqual(parseHash("#/").parts, []);
});

test("a link escapes each segment and leaves out empty query values", () => {
  assert.equal(link(["queue", "a/b c"]), "#/queue/a%2Fb%20c");
  assert.equal(link(["queue", "q"], { status: "", key: "k 1", worker: "" }), "#/queue/q?key=k+1");
  assert.equal(link([]), "#/");
  assert.equal(queueLink("q", { status: "failed" }), "#/queue/q?status=failed");
  assert.equal(taskLink("q/1", "42"), "#/task/q%2F1/42");
});

test("a link read back is the address it was made from", () => {
  const query = { status: "in progress", key: "a&b=c", from: "2026-12-01T10:00" };
  const route = parseHash(queueLink("emails #1", query));
  assert.deepEqual(route.parts, ["queue", "emails #1"]);
  assert.deepEqual(Object.fromEntries(route.query), query);
});

test("each address shows its page, under its section of the menu", () => {
  const at = (/** @type {string} */ hash) => place(parseHash(hash));
  const queue = at("#/queue/emails?status=failed");
  assert.equal(queue.page, "queue");
  assert.equal(queue.page === "queue" && queue.name, "emails");
  assert.equal(queue.page === "queue" && queue.query.get("status"), "failed");
  assert.deepEqual(at("#/task/emails/42"), { page: "task", queue: "emails", id: "42" });
  assert.deepEqual(at("#/workers"), { page: "workers" });
  assert.deepEqual(at("#/schedules"), { page: "schedules" });
  assert.equal(section(queue), "queues");
  assert.equal(section(at("#/task/emails/42")), "queues");
  assert.equal(section(at("#/workers")), "workers");
  assert.equal(section(at("#/schedules")), "schedules");
});

test("an address the dashboard does not know, or an incomplete one, shows the queues", () => {
  for (const hash of ["#/", "#/nowhere", "#/queue", "#/queue/", "#/task/emails", "#/task//42"]) {
    assert.deepEqual(place(parseHash(hash)), { page: "queues" }, hash);
  }
});
