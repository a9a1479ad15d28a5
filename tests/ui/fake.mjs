// @ts-check
// The browser's globals that api.mjs uses, faked for node --test: sessionStorage, fetch, and
// the window's events. Not a test file: the tests import it.

/** @typedef {{method: string, path: string, headers: Record<string, string>, body: string | undefined}} Sent */

/** The requests the page sent, in order. @type {Sent[]} */
export const sent = [];
/** The events the page dispatched on the window. @type {Event[]} */
export const events = [];

/** @type {Map<string, string>} */
const stored = new Map();
/** @type {(path: string) => Response | Promise<Response>} */
let answer = () => new Response(null, { status: 204 });

const storage = {
  getItem: (/** @type {string} */ key) => stored.get(key) ?? null,
  setItem: (/** @type {string} */ key, /** @type {string} */ value) => void stored.set(key, value),
  removeItem: (/** @type {string} */ key) => void stored.delete(key),
};

Object.assign(globalThis, {
  sessionStorage: storage,
  dispatchEvent: (/** @type {Event} */ event) => events.push(event) > 0,
  /**
   * @param {string} path
   * @param {RequestInit} init
   */
  fetch: async (path, init) => {
    sent.push({
      method: String(init.method),
      path,
      headers: /** @type {Record<string, string>} */ (init.headers),
      body: /** @type {string | undefined} */ (init.body),
    });
    return answer(path);
  },
});

/**
 * Answer every request with `respond` from now on, and forget what was sent.
 * @param {(path: string) => Response | Promise<Response>} respond
 */
export function answerWith(respond) {
  answer = respond;
  sent.length = 0;
  events.length = 0;
}

/**
 * A JSON answer.
 * @param {number} status
 * @param {unknown} body
 */
export const reply = (status, body) => new Response(JSON.stringify(body), { status });
