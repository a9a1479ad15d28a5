#!/usr/bin/env node
// Writes src/openapi-types.ts, the TypeScript types of every schema and route of Katar's
// OpenAPI document, so that the client's records and options follow the server's.
//
//   node scripts/openapi-types.mjs            write src/openapi-types.ts
//   node scripts/openapi-types.mjs --check    fail (exit 1) when the committed file is stale
//   node scripts/openapi-types.mjs --input openapi.json   read the document from a file
//
// Without --input, the document is built by the server's own code (katar.http.openapi),
// with the Python of $KATAR_PYTHON, else the repository's .venv, else `python3`: the same
// document `katar serve` answers at /openapi.json (with the default limits).

import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const target = resolve(here, "..", "src", "openapi-types.ts");
const repository = resolve(here, "..", "..", "..");

const PRINT = `
import json
from katar.http.openapi import document
from katar.http.routes import ROUTES
from katar.limits import Limits
print(json.dumps(document(ROUTES, Limits()), sort_keys=True))
`;

function readDocument(args) {
  const at = args.indexOf("--input");
  if (at >= 0) return JSON.parse(readFileSync(args[at + 1], "utf8"));
  const venv = join(repository, ".venv", "bin", "python");
  const python = process.env.KATAR_PYTHON ?? (existsSync(venv) ? venv : "python3");
  const env = { ...process.env, PYTHONPATH: [join(repository, "src"), process.env.PYTHONPATH].filter(Boolean).join(":") };
  return JSON.parse(execFileSync(python, ["-c", PRINT], { encoding: "utf8", env, maxBuffer: 64 << 20 }));
}

// -- JSON Schema to TypeScript ---------------------------------------------------------

const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const key = (name) => (IDENTIFIER.test(name) ? name : JSON.stringify(name));

function comment(text, indent) {
  if (!text) return "";
  const lines = String(text).replace(/\*\//g, "*\\/").trim().split("\n");
  if (lines.length === 1) return `${indent}/** ${lines[0]} */\n`;
  return `${indent}/**\n${lines.map((l) => `${indent} * ${l}`.trimEnd()).join("\n")}\n${indent} */\n`;
}

function union(parts) {
  const unique = [...new Set(parts)];
  if (unique.includes("unknown")) return "unknown";
  return unique.length === 1 ? unique[0] : unique.map((p) => (p.includes("=>") ? `(${p})` : p)).join(" | ");
}

function typeOf(schema, indent) {
  if (schema === true || schema === undefined || schema === null) return "unknown";
  if (schema === false) return "never";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if ("const" in schema) return JSON.stringify(schema.const);
  if (schema.enum) return union(schema.enum.map((v) => JSON.stringify(v)));
  if (schema.anyOf || schema.oneOf) return union((schema.anyOf ?? schema.oneOf).map((s) => typeOf(s, indent)));
  // "not" and the like only validate: they narrow nothing TypeScript can say.
  const shapes = (schema.allOf ?? []).filter((s) => Object.keys(s).some((k) => !["not", "description", "title"].includes(k)));
  if (shapes.length && !schema.properties && !schema.type) {
    const parts = [...new Set(shapes.map((s) => typeOf(s, indent)))];
    return parts.length === 1 ? parts[0] : parts.map((p) => `(${p})`).join(" & ");
  }
  const type = schema.type;
  if (Array.isArray(type)) return union(type.map((t) => typeOf({ ...schema, type: t }, indent)));
  switch (type) {
    case "string":
      return "string";
    case "integer":
    case "number":
      return "number";
    case "boolean":
      return "boolean";
    case "null":
      return "null";
    case "array": {
      const item = typeOf(schema.items, indent);
      return /^[A-Za-z0-9_]+$/.test(item) ? `${item}[]` : `Array<${item}>`;
    }
    case "object":
      return objectOf(schema, indent);
    default:
      // No type: any JSON value (a task's data, result, progress...).
      if (schema.properties) return objectOf(schema, indent);
      return "unknown";
  }
}

function objectOf(schema, indent) {
  const properties = schema.properties ?? {};
  const required = new Set(schema.required ?? []);
  const inner = `${indent}  `;
  let body = "";
  for (const [name, property] of Object.entries(properties)) {
    body += comment(property.description ?? firstDescription(property), inner);
    body += `${inner}${key(name)}${required.has(name) ? "" : "?"}: ${typeOf(property, inner)};\n`;
  }
  const extra = schema.additionalProperties;
  if (extra !== undefined && extra !== false) {
    const value = extra === true ? "unknown" : typeOf(extra, inner);
    body += `${inner}[name: string]: ${Object.keys(properties).length ? "unknown" : value};\n`;
  } else if (!schema.properties && extra === undefined) {
    body += `${inner}[name: string]: unknown;\n`;
  }
  return body ? `{\n${body}${indent}}` : "Record<string, never>";
}

function firstDescription(schema) {
  for (const option of schema.anyOf ?? schema.oneOf ?? []) if (option.description) return option.description;
  return "";
}

function declaration(name, schema) {
  const doc = comment(schema.description ?? schema.title, "");
  const type = typeOf(schema, "");
  if (type.startsWith("{")) return `${doc}export interface ${name} ${type}\n`;
  return `${doc}export type ${name} = ${type};\n`;
}

// -- routes --------------------------------------------------------------------------------

function content(response) {
  if (!response.content) return "null";
  const json = response.content["application/json"];
  if (json) return typeOf(json.schema, "      ");
  return "string";
}

function operations(document) {
  let out = "";
  const entries = [];
  for (const [path, item] of Object.entries(document.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (method === "parameters") continue;
      entries.push({ path, method, operation, shared: item.parameters ?? [] });
    }
  }
  entries.sort((a, b) => a.operation.operationId.localeCompare(b.operation.operationId));
  for (const { path, method, operation, shared } of entries) {
    const parameters = [...shared, ...(operation.parameters ?? [])];
    const group = (where) => {
      const found = parameters.filter((p) => p.in === where);
      if (!found.length) return "Record<string, never>";
      return `{\n${found
        .map((p) => `${comment(p.description, "      ")}      ${key(p.name)}${p.required ? "" : "?"}: ${typeOf(p.schema, "      ")};\n`)
        .join("")}    }`;
    };
    const body = operation.requestBody?.content?.["application/json"]?.schema;
    const responses = Object.entries(operation.responses ?? {})
      .map(([status, response]) => `${comment(response.description, "      ")}      ${status}: ${content(response)};\n`)
      .join("");
    out += comment(`${operation.summary ?? ""}${operation.description ? `\n\n${operation.description}` : ""}`, "  ");
    out += `  ${operation.operationId}: {\n`;
    out += `    method: ${JSON.stringify(method.toUpperCase())};\n`;
    out += `    path: ${JSON.stringify(path)};\n`;
    out += `    role: ${JSON.stringify(operation["x-katar-role"] ?? null)};\n`;
    out += `    pathParams: ${group("path")};\n`;
    out += `    query: ${group("query")};\n`;
    out += `    headers: ${group("header")};\n`;
    out += `    body: ${body ? typeOf(body, "    ") : "never"};\n`;
    out += `    responses: {\n${responses}    };\n`;
    out += "  };\n";
  }
  return `/** Every route, by its operationId: method, path, parameters, body and answers by status. */\nexport interface Operations {\n${out}}\n`;
}

export function generate(document) {
  let out = `// GENERATED by scripts/openapi-types.mjs from Katar's OpenAPI document (katar ${document.info.version}).
// Do not edit: run \`npm run types\` after a change to the server's routes or records.
/* eslint-disable */

`;
  for (const [name, schema] of Object.entries(document.components.schemas)) out += `${declaration(name, schema)}\n`;
  out += operations(document);
  out += `\n/** The operationIds of {@link Operations}. */\nexport type OperationId = keyof Operations;\n`;
  return out;
}

const args = process.argv.slice(2);
const text = generate(readDocument(args)).replace(/katar [^)]+\)\./, "katar).");
if (args.includes("--check")) {
  const current = existsSync(target) ? readFileSync(target, "utf8") : "";
  if (current !== text) {
    console.error("src/openapi-types.ts is stale: the server's OpenAPI document changed. Run `npm run types` in clients/typescript and commit the result.");
    process.exit(1);
  }
  console.error("src/openapi-types.ts matches the server's OpenAPI document");
} else {
  writeFileSync(target, text);
  console.error(`wrote ${target}`);
}
