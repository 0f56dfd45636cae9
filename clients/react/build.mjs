// Builds @voxgate/react: esbuild for the code (react and @voxgate/client stay imports), tsc for
// the types. Needs @voxgate/client built first (its types come from its dist).
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });
const result = await esbuild.build({
  absWorkingDir: here,
  entryPoints: ["src/index.ts"],
  bundle: true,
  format: "esm",
  platform: "browser",
  target: "es2020",
  external: ["react", "@voxgate/client"],
  legalComments: "none",
  write: false,
  logLevel: "warning",
});
// "use client": the hook is for client components; Next.js then lets a server component
// import this package's types and render a client component that uses it.
writeFileSync(join(dist, "index.js"), `"use client";\n` + result.outputFiles[0].text);
const tsc = join(here, "..", "node_modules", "typescript", "bin", "tsc");
execFileSync(process.execPath, [tsc, "-p", "tsconfig.json", "--emitDeclarationOnly"], { cwd: here, stdio: "inherit" });
