// @ts-check
// How the dashboard writes numbers, durations and times (src/katar/ui/static/format.mjs).
import assert from "node:assert/strict";
import { test } from "node:test";
import { ago, count, duration, json, limitsSummary, niceMax, rate } from "../../src/katar/ui/static/format.mjs";

test("a count of none is 0", () => {
  assert.equal(count(undefined), "0");
  assert.equal(count(null), "0");
  assert.equal(count(7), "7");
  assert.equal(count(1234567), new Intl.NumberFormat().format(1234567));
});

test("a duration is written in its two largest units", () => {
  assert.equal(duration(null), "–");
  assert.equal(duration(undefined), "–");
  assert.equal(duration(0), "0 s");
  assert.equal(duration(-5), "0 s");
  assert.equal(duration(59.4), "59 s");
  assert.equal(duration(59.6), "1 min");
  assert.equal(duration(60), "1 min");
  assert.equal(duration(185), "3 min 5 s");
  assert.equal(duration(3600), "1 h 0 min");
  assert.equal(duration(3600 * 5 + 60 * 7 + 59), "5 h 7 min");
  assert.equal(duration(86400 * 2 + 3600 * 4 + 10), "2 d 4 h");
});

test("an instant is said relative to now, past or future", () => {
  const now = Date.parse("2026-12-07T12:00:00Z");
  assert.equal(ago("2026-12-07T11:59:30Z", now), "30 s ago");
  assert.equal(ago("2026-12-07T12:00:00Z", now), "0 s ago");
  assert.equal(ago("2026-12-07T12:02:00Z", now), "in 2 min");
  assert.equal(ago("2026-12-05T10:00:00Z", now), "2 d 2 h ago");
  assert.equal(ago(null, now), "–");
  assert.equal(ago("", now), "–");
});

test("data is shown as indented JSON, nothing for none", () => {
  assert.equal(json(undefined), "");
  assert.equal(json(null), "null");
  assert.equal(json({ a: [1] }), '{\n  "a": [\n    1\n  ]\n}');
});

test("a rate keeps whole numbers and about three digits of fractions", () => {
  assert.equal(rate(0), "0");
  assert.equal(rate(12), "12");
  assert.equal(rate(0.5), "0.50");
  assert.equal(rate(2.345), "2.35");
  assert.equal(rate(12.34), "12.3");
  assert.equal(rate(123.6), "124");
});

test("the top of a chart's scale is 1, 2 or 5 times a power of ten", () => {
  assert.equal(niceMax(0), 1);
  assert.equal(niceMax(0.3), 1);
  assert.equal(niceMax(1), 1);
  assert.equal(niceMax(1.5), 2);
  assert.equal(niceMax(3), 5);
  assert.equal(niceMax(7), 10);
  assert.equal(niceMax(10), 10);
  assert.equal(niceMax(11), 20);
  assert.equal(niceMax(450), 500);
  assert.equal(niceMax(501), 1000);
});

test("a queue's limits in words, and whether its concurrency is all taken", () => {
  assert.equal(limitsSummary(null), null);
  assert.deepEqual(limitsSummary({ in_progress: 3 }), { text: "3 running", full: false });
  assert.deepEqual(limitsSummary({ in_progress: 2, concurrency: 2 }), { text: "2 of 2 running (full)", full: true });
  assert.deepEqual(limitsSummary({ in_progress: 1, concurrency: 4, tokens: 7, keys_at_limit: 2 }), {
    text: "1 of 4 running · rate: 7 deliveries available now · 2 keys at their limit",
    full: false,
  });
  assert.deepEqual(limitsSummary({ in_progress: 0, concurrency: null, tokens: 0, keys_at_limit: 0 }), {
    text: "0 running · rate: 0 deliveries available now",
    full: false,
  });
  assert.deepEqual(limitsSummary({ in_progress: 5, tokens: 2, keys_rate_limited: 3 }), {
    text: "5 running · rate: 2 deliveries available now · key rate: 3 keys waiting for a token",
    full: false,
  });
});
