// A real `katar serve` for the tests: SQLite in a temporary directory, or a fresh schema of
// the PostgreSQL at KATAR_TEST_POSTGRES_URL. The server is $KATAR_BIN, else the
// repository's .venv/bin/katar. Every server a test starts is killed by its PID at the end.

import { spawn, execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repository = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const KATAR = process.env.KATAR_BIN ?? join(repository, ".venv", "bin", "katar");
const PYTHON = join(dirname(KATAR), "python");

// Servers still running when the test process ends (a failed test, a timeout's SIGTERM) are
// killed by their PID, so that none outlives the suite.
const live = new Set();
process.on("exit", () => {
  for (const child of live) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});
for (const signal of ["SIGTERM", "SIGINT"]) process.once(signal, () => process.exit(130));

/** The stores the suite runs on: SQLite always, PostgreSQL when a URL is given. */
export const STORES = process.env.KATAR_TEST_POSTGRES_URL ? ["sqlite", "postgres"] : ["sqlite"];

export class Server {
  constructor(store = "sqlite", { config = null } = {}) {
    this.store = store;
    this.dir = mkdtempSync(join(tmpdir(), "katar-js-"));
    this.config = config;
    this.port = 0;
    this.process = null;
    this.output = "";
    if (store === "postgres") {
      this.schema = `katar_js_${randomBytes(6).toString("hex")}`;
      const base = process.env.KATAR_TEST_POSTGRES_URL;
      this.db = `${base}${base.includes("?") ? "&" : "?"}schema=${this.schema}&pool_size=4`;
    } else {
      this.db = "sqlite:///k.db";
    }
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts it (on the port it had, after a stop), resolving once it serves. */
  async start() {
    if (!existsSync(KATAR)) throw new Error(`no katar at ${KATAR}: set KATAR_BIN`);
    const args = ["serve", "--port", String(this.port), "--db", this.db];
    if (this.config) {
      writeFileSync(join(this.dir, "katar.toml"), this.config);
      args.push("--config", "katar.toml");
    }
    const child = spawn(KATAR, args, { cwd: this.dir, stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, PYTHONUNBUFFERED: "1" } });
    this.process = child;
    live.add(child);
    child.on("exit", () => live.delete(child));
    await new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => reject(new Error(`katar serve did not start:\n${this.output}`)), 30000);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (chunk) => {
        this.output += chunk;
        const match = /serving on https?:\/\/127\.0\.0\.1:(\d+)/.exec(this.output);
        if (match && !this.port) this.port = Number(match[1]);
        if (match) {
          clearTimeout(timer);
          resolvePromise();
        }
      });
      child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`katar serve exited (${code}):\n${this.output}`));
      });
    });
    return this;
  }

  /** kill -9, and wait for the process to end. */
  async kill() {
    const child = this.process;
    this.process = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const ended = new Promise((r) => child.once("exit", r));
    process.kill(child.pid, "SIGKILL");
    await ended;
  }

  /** Kills it and removes what it left: the directory, the PostgreSQL schema. */
  async close() {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
    if (this.schema) {
      const drop = `import psycopg, sys\nwith psycopg.connect(sys.argv[1], autocommit=True) as c: c.execute('DROP SCHEMA IF EXISTS ${this.schema} CASCADE')`;
      try {
        execFileSync(existsSync(PYTHON) ? PYTHON : "python3", ["-c", drop, process.env.KATAR_TEST_POSTGRES_URL], { stdio: "ignore" });
      } catch {
        // A leftover schema is harmless: tests make fresh ones.
      }
    }
  }

  /** An HTTP call to the server, for what the client does not do (queues). */
  async call(method, path, body) {
    const response = await fetch(`${this.url}${path}`, {
      method,
      headers: { "Content-Type": "application/json", ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  queue(name, options = {}) {
    return this.call("PUT", `/v1/queue/${name}`, { persistent: true, ...options });
  }
}

/** A token and the line of katar.toml that declares it. */
export function token(role, queues) {
  const secret = `katar_${randomBytes(24).toString("hex")}`;
  const sha = createHash("sha256").update(secret).digest("hex");
  return { secret, toml: `[[tokens]]\ntoken_sha256 = "${sha}"\nrole = "${role}"\nqueues = ${JSON.stringify(queues)}\n` };
}

/** Resolves once `check()` is true; fails after `seconds`. */
export async function until(check, seconds = 30, what = "the condition") {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export const pause = (ms) => new Promise((r) => setTimeout(r, ms));
