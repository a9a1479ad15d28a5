// Katar's HTTP API as the dashboard uses it: the token, requests, and errors in plain words.
// The token lives in sessionStorage: it is gone when the tab closes, and no other site can
// read it (the page's Content-Security-Policy lets it talk to this server only).

const KEY = "katar.token";

export function getToken() {
  return sessionStorage.getItem(KEY);
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

/** An answer other than 2xx, or no answer at all (status 0). */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

const MEANING = {
  400: "The server could not read the request",
  401: "The token was not accepted",
  403: "This token may not do that",
  404: "Not found",
  409: "Not possible in the task's current state",
  413: "Too large for the server",
  422: "The server refused the input",
  429: "The server is busy; try again in a moment",
  503: "The server's store is unavailable; nothing was changed",
  504: "The server lost its store while saving; the change may or may not have been made",
};

function plain(status, body) {
  const said = body && typeof body.error === "string" ? body.error : "";
  const meaning = MEANING[status] || `The server answered ${status}`;
  return said ? `${meaning}: ${said}` : `${meaning}.`;
}

/**
 * Call the API. `body` is sent as JSON; a string is sent as it is (the enqueue editor's
 * text, so that the server's own validation message comes back). Resolves to the parsed
 * answer (null for an empty one); rejects with an ApiError.
 */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "The server cannot be reached. Is katar serve running?");
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, plain(response.status, parsed), parsed);
    // A token that stopped working (revoked, or the server restarted with other tokens):
    // the app goes back to the sign-in form.
    if (response.status === 401 && token) {
      dispatchEvent(new CustomEvent("katar:unauthorized", { detail: error.message }));
    }
    throw error;
  }
  return parsed;
}

/** `/v1/queue/{queue}...` with the queue's name escaped. */
export function queuePath(queue, rest = "") {
  return `/v1/queue/${encodeURIComponent(queue)}${rest}`;
}
