// Bundles the console: src/main.jsx (with its CSS) into dist/app.js and dist/app.css, and
// copies src/index.html. `node build.mjs [outdir]`; the output is a pure function of the
// sources and the locked package versions, so `make console-check` can rebuild into a
// temporary directory and compare it with the committed dist/.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const outdir = process.argv[2] ?? "dist";
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: { app: "src/main.jsx" },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  jsx: "automatic",
  jsxImportSource: "preact",
  outdir,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
});
copyFileSync("src/index.html", join(outdir, "index.html"));
