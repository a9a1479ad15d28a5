// @ts-check
// The dashboard's calls to the API (src/katar/ui/static/api.mjs), against a fake fetch.
import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";
import { answerWith, events, reply, sent } from "./fake.mjs";
import * as api from "../../src/katar/ui/static/api.mjs";
import { CALLS, NOT_ENDPOINTS } from "./calls.mjs";

beforeEach(() => {
  api.clearToken();
  answerWith(() => new Response(null, { status: 204 }));
});

test("each endpoint function sends its method to its path, escaped, with its body", async () => {
  for (const { route, path, body, call } of CALLS) {
    answerWith(() => new Response(null, { status: 204 }));
    await call();
    assert.equal(sent.length, 1, route);
    assert.equal(`${sent[0].method} ${sent[0].path}`, `${route.split(" ")[0]} ${path}`, route);
    assert.deepEqual(sent[0].body === undefined ? undefined : JSON.parse(sent[0].body), body, route);
  }
});

test("every export of api.mjs but the token's and the error is an endpoint, called above", () => {
  const called = new Set(CALLS.map((c) => c.name));
  for (const name of Object.keys(api)) {
    assert.ok(called.has(name) || NOT_ENDPOINTS.includes(name), `${name} is not in calls.mjs`);
  }
});

test("the enqueue editor's text is sent as it is, for the server to judge", async () => {
  await api.enqueue("q", '{"data": 1, "priority": "urgent"}');
  assert.equal(sent[0].body, '{"data": 1, "priority": "urgent"}');
  assert.equal(sent[0].headers["Content-Type"], "application/json");
});

test("the token goes with every request once set, and not after sign-out", async () => {
  await api.listQueues();
  assert.equal(sent[0].headers.Authorization, undefined);
  api.setToken("katar_abc");
  assert.equal(api.getToken(), "katar_abc");
  await api.listQueues();
  assert.equal(sent[1].headers.Authorization, "Bearer katar_abc");
  api.clearToken();
  await api.listQueues();
  assert.equal(sent[2].headers.Authorization, undefined);
});

test("an answer is parsed; an empty one is null", async () => {
  answerWith(() => reply(200, { queues: [] }));
  assert.deepEqual(await api.listQueues(), { queues: [] });
  answerWith(() => new Response(null, { status: 204 }));
  assert.equal(await api.deleteTask("q", "1"), null);
});

test("a refusal says what it means in plain words, with the server's reason", async () => {
  answerWith(() => reply(403, { error: "this token may not use the queue 'billing'" }));
  await assert.rejects(api.listQueues(), (/** @type {any} */ error) => {
    assert.ok(error instanceof api.ApiError);
    assert.equal(error.status, 403);
    assert.equal(error.message, "This token may not do that: this token may not use the queue 'billing'");
    assert.deepEqual(error.body, { error: "this token may not use the queue 'billing'" });
    return true;
  });
  answerWith(() => new Response("<html>oops</html>", { status: 502 }));
  await assert.rejects(api.listQueues(), { status: 502, message: "The server answered 502." });
  answerWith(() => new Response("", { status: 503 }));
  await assert.rejects(api.listQueues(), {
    status: 503,
    message: "The server's store is unavailable; nothing was changed.",
  });
});

test("no answer at all is status 0", async () => {
  answerWith(() => Promise.reject(new TypeError("Failed to fetch")));
  await assert.rejects(api.listQueues(), { status: 0, message: "The server cannot be reached. Is katar serve running?" });
});

test("a token that stops working sends the page back to sign-in; no token, no event", async () => {
  answerWith(() => reply(401, { error: "the token is not valid on this server" }));
  await assert.rejects(api.whoAmI(), { status: 401 });
  assert.equal(events.length, 0);
  api.setToken("katar_revoked");
  await assert.rejects(api.listQueues(), { status: 401 });
  assert.equal(events.length, 1);
  assert.equal(events[0].type, "katar:unauthorized");
  assert.equal(
    /** @type {CustomEvent<string>} */ (events[0]).detail,
    "The token was not accepted: the token is not valid on this server",
  );
});
