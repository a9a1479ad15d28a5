#!/usr/bin/env node
// Packs the client (npm pack), installs the tarball in an empty project (no network: the
// package has no dependency), and runs the README's example there against a real
// `katar serve`. Exit 0 when the example prints `done` and the task's result.

import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { Server } from "../test/server.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const readme = readFileSync(join(root, "README.md"), "utf8");
const block = /<!-- example:[^\n]*-->\n```js\n([\s\S]*?)```/.exec(readme);
if (!block) throw new Error("README.md has no example block (<!-- example: ... --> then ```js)");

const work = mkdtempSync(join(tmpdir(), "katar-pack-"));
const server = new Server("sqlite");
let code = 1;
try {
  const packed = execFileSync("npm", ["pack", "--silent", "--pack-destination", work], { cwd: root, encoding: "utf8" }).trim().split("\n").pop();
  const project = join(work, "project");
  execFileSync("mkdir", [project]);
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "empty", version: "1.0.0", private: true, type: "module" }));
  execFileSync("npm", ["install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", join(work, packed)], { cwd: project, stdio: "inherit" });
  writeFileSync(join(project, "example.js"), block[1]);
  await server.start();
  await server.queue("emails");
  const child = spawn(process.execPath, ["example.js"], { cwd: project, env: { ...process.env, KATAR_URL: server.url }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (c) => (out += c));
  child.stderr.on("data", (c) => (err += c));
  const timer = setTimeout(() => child.kill("SIGKILL"), 60000);
  const status = await new Promise((r) => child.on("exit", (c) => r(c)));
  clearTimeout(timer);
  if (status === 0 && out.trim() === 'done {"sent":true,"to":"ada@example.com"}') {
    console.error(`ok: ${packed} installs in an empty project and runs the README's example`);
    code = 0;
  } else {
    console.error(`the README's example failed (exit ${status}):\n${out}\n${err}`);
  }
} finally {
  await server.close();
  rmSync(work, { recursive: true, force: true });
}
process.exit(code);
