// @ts-check
// What the dashboard offers a token (src/katar/ui/static/rights.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { NEEDS, describe, may } from "../../src/katar/ui/static/rights.mjs";

/** @typedef {import("../../src/katar/ui/static/rights.mjs").Token} Token */
/** @typedef {import("../../src/katar/ui/static/rights.mjs").Right} Right */

const RIGHTS = /** @type {Right[]} */ (Object.keys(NEEDS));

/**
 * @param {Token["role"]} role
 * @param {Partial<Token>} [rest]
 * @returns {Token}
 */
const token = (role, rest = {}) => ({ role, queues: ["*"], name: "", auth: true, ...rest });

test("an admin token is offered every action", () => {
  for (const what of RIGHTS) assert.equal(may(token("admin"), what), true, what);
});

test("producer and worker tokens are offered no action", () => {
  for (const role of /** @type {const} */ (["producer", "worker"])) {
    for (const what of RIGHTS) assert.equal(may(token(role), what), false, `${role} ${what}`);
  }
});

test("roles are ordered: a right a role has, every higher role has", () => {
  const order = /** @type {const} */ (["worker", "producer", "admin"]);
  for (const what of RIGHTS) {
    const from = order.findIndex((role) => may(token(role), what));
    assert.notEqual(from, -1, what);
    for (const role of order.slice(from)) assert.equal(may(token(role), what), true, `${role} ${what}`);
  }
});

test("the token in words: its role, read-only when it may do nothing here, and its queues", () => {
  assert.deepEqual(describe(token("admin")), { role: "admin", scope: "every queue" });
  assert.deepEqual(describe(token("producer", { queues: ["orders", "mails"] })), {
    role: "producer, read-only",
    scope: "orders, mails",
  });
  assert.deepEqual(describe(token("worker", { queues: ["a", "*"] })), {
    role: "worker, read-only",
    scope: "every queue",
  });
});
