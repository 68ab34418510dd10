// Parse an AsyncAPI document with the official @asyncapi/parser and print its diagnostics.
//
// Usage: node asyncapi_parse.js <folder holding node_modules/@asyncapi/parser> < document.json
// Prints one JSON array: every diagnostic as {code, message, path, severity}, where
// severity is the parser's number (0 error, 1 warning, 2 information, 3 hint).
// tests/test_asyncapi.py installs the parser and runs this; the parser is the judge of
// whether the document tidelog serves is valid, not a check written here.
"use strict";

const { createRequire } = require("node:module");
const path = require("node:path");

async function main() {
  const folder = process.argv[2];
  if (!folder) {
    throw new Error("usage: node asyncapi_parse.js <folder with node_modules> < document.json");
  }
  const load = createRequire(path.join(path.resolve(folder), "package.json"));
  const { Parser } = load("@asyncapi/parser");
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const { diagnostics } = await new Parser().parse(Buffer.concat(chunks).toString("utf8"));
  const out = diagnostics.map((d) => ({
    code: String(d.code),
    message: d.message,
    path: d.path,
    severity: d.severity,
  }));
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(String((err && err.stack) || err));
  process.exit(2);
});
