// The requests every part of the client makes: headers, JSON, errors, backoff.

/** How to reach a Katar server. */
export interface ConnectionOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:3000`. */
  url: string;
  /** A token from `katar token`; none for a server without tokens. */
  token?: string;
  /** A `fetch` to use instead of the global one (tests, proxies, other runtimes). */
  fetch?: typeof fetch;
  /** Headers added to every request (e.g. `User-Agent`). */
  headers?: Record<string, string>;
}

/**
 * An answer other than 2xx, or no answer at all (`status` 0). `body` is the server's JSON
 * error (`{"error": ..., ...}`) when there was one; `message` says what went wrong and where.
 */
export class KatarError extends Error {
  readonly status: number;
  readonly body: Record<string, unknown> | null;
  constructor(message: string, status: number, body: Record<string, unknown> | null = null, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KatarError";
    this.status = status;
    this.body = body;
  }

  /** True when trying again later may succeed: no answer, a 5xx, a 408 or a 429. */
  get transient(): boolean {
    return isTransient(this.status);
  }
}

/** No answer (0), a 5xx, 408 or 429: "try again later". Every other 4xx is a mistake. */
export function isTransient(status: number): boolean {
  return status === 0 || status >= 500 || status === 408 || status === 429;
}

/**
 * Milliseconds to wait before try number `failures` (1, 2, ...): 250 ms doubled each time,
 * at most `cap`, times a random factor between 0.5 and 1 (so that many clients restarting
 * together do not retry in step).
 */
export function backoff(failures: number, cap = 5000): number {
  const base = Math.min(cap, 250 * 2 ** Math.min(Math.max(failures - 1, 0), 20));
  return Math.round(base * (0.5 + Math.random() / 2));
}

/** What one request brought back. */
export interface Answer {
  status: number;
  body: any;
  text: string;
  headers: Headers;
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  headers?: Record<string, string>;
  /** Abort after this many ms without an answer (the request then counts as unanswered). */
  timeout?: number;
  signal?: AbortSignal;
}

/** A sleep that `signal` cuts short (it then resolves, it does not reject). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

export class Connection {
  readonly url: string;
  private readonly fetch: typeof fetch;
  private readonly headers: Record<string, string>;

  constructor(options: ConnectionOptions) {
    if (!options || typeof options.url !== "string" || !/^https?:\/\//.test(options.url)) {
      throw new TypeError(`katar: "url" must be an http:// or https:// URL, not ${JSON.stringify(options?.url)}`);
    }
    this.url = options.url.replace(/\/+$/, "");
    const found = options.fetch ?? globalThis.fetch;
    if (typeof found !== "function") throw new TypeError("katar: this runtime has no fetch; pass options.fetch");
    this.fetch = found;
    this.headers = { "Content-Type": "application/json", "User-Agent": "katar-js", ...options.headers };
    if (options.token) this.headers.Authorization = `Bearer ${options.token}`;
  }

  /** One request. Never throws for an HTTP status: status 0 means no answer at all. */
  async send(path: string, options: RequestOptions = {}): Promise<Answer> {
    const controller = new AbortController();
    const abort = () => controller.abort();
    options.signal?.addEventListener("abort", abort, { once: true });
    if (options.signal?.aborted) controller.abort();
    const timer = options.timeout ? setTimeout(abort, options.timeout) : undefined;
    try {
      const init: RequestInit = { method: options.method ?? "GET", headers: { ...this.headers, ...options.headers }, signal: controller.signal };
      if (options.body !== undefined) init.body = JSON.stringify(options.body);
      const response = await this.fetch(`${this.url}${path}`, init);
      const text = await response.text();
      let body: any = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        body = null;
      }
      return { status: response.status, body, text, headers: response.headers };
    } catch (error) {
      return { status: 0, body: null, text: describe(error), headers: new Headers() };
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      options.signal?.removeEventListener("abort", abort);
    }
  }

  /** The answer's body for a 2xx; a {@link KatarError} for anything else. */
  async call(path: string, options: RequestOptions = {}): Promise<any> {
    const answer = await this.send(path, options);
    if (answer.status >= 200 && answer.status < 300) return answer.body;
    throw errorOf(answer, `${options.method ?? "GET"} ${path}`, this.url);
  }
}

/** The error an answer means, naming the request (`where`). */
export function errorOf(answer: Answer, where: string, url: string): KatarError {
  if (answer.status === 0) {
    return new KatarError(`no answer from the server at ${url} (${where}): ${answer.text}`, 0);
  }
  const body = answer.body && typeof answer.body === "object" && !Array.isArray(answer.body) ? (answer.body as Record<string, unknown>) : null;
  const message = typeof body?.error === "string" ? body.error : answer.text || `HTTP ${answer.status}`;
  return new KatarError(`${where}: ${answer.status} ${message}`, answer.status, body);
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    const why = cause instanceof Error ? `: ${cause.message}` : "";
    return error.name === "AbortError" ? "the request was cut short" : `${error.message}${why}`;
  }
  return String(error);
}

/** A segment of a path, escaped. */
export function segment(value: string | number): string {
  return encodeURIComponent(String(value));
}
