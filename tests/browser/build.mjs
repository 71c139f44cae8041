// Builds the page under test into OUT_DIR: generates the messages and
// service descriptors from proto/ with protoc-gen-es (run through buf), then
// bundles src/page.js and the client library into one file with esbuild.
//
//   node tests/browser/build.mjs OUT_DIR     (buf on PATH: .venv/bin)
//
// OUT_DIR/site/ then holds index.html and app.js, ready to be served.
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const nodeModules = join(here, "node_modules");

const out = process.argv[2];
if (!out) {
  console.error("usage: node build.mjs OUT_DIR");
  process.exit(2);
}
const gen = join(resolve(out), "gen");
const site = join(resolve(out), "site");
mkdirSync(site, { recursive: true });

// protoc-gen-es through buf: the template is passed inline so the plugin's
// absolute path needs no config file.
const template = JSON.stringify({
  version: "v2",
  plugins: [
    {
      local: join(nodeModules, ".bin", "protoc-gen-es"),
      out: gen,
      opt: ["target=js"],
    },
  ],
});
const buf = spawnSync("buf", ["generate", join(repo, "proto"), "--template", template], {
  stdio: "inherit",
});
if (buf.error || buf.status !== 0) {
  console.error(`build.mjs: buf generate failed (${buf.error ?? `exit ${buf.status}`}); is .venv/bin on PATH?`);
  process.exit(1);
}

// `@gen/...` in src/page.js names the generated files; packages resolve
// from this folder's node_modules, also for the generated code in OUT_DIR.
const genAlias = {
  name: "gen-alias",
  setup(build) {
    build.onResolve({ filter: /^@gen\// }, (args) => ({
      path: join(gen, args.path.slice("@gen/".length)),
    }));
  },
};
await esbuild.build({
  entryPoints: [join(here, "src", "page.js")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(site, "app.js"),
  nodePaths: [nodeModules],
  plugins: [genAlias],
  logLevel: "warning",
});
writeFileSync(
  join(site, "index.html"),
  `<!doctype html>
<html>
  <head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Tally browser test</title></head>
  <body>
    <h1>Tally</h1>
    <script type="module" src="/app.js"></script>
  </body>
</html>
`,
);
console.error(`build.mjs: built ${site}`);
