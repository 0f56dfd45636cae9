import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// Unit tests of both packages; the browser behaviour is tested in real Chromium from pytest
// (tests/e2e/test_web_packages.py).
export default defineConfig({
  test: {
    include: ["web/test/**/*.test.ts", "react/test/**/*.test.{ts,tsx}"],
    environment: "node",
    pool: "threads",
    poolOptions: { threads: { maxThreads: 1, minThreads: 1 } },
  },
  // The hook's tests run against the client's source, not a possibly stale dist.
  resolve: { alias: { "@voxgate/client": fileURLToPath(new URL("./web/src/index.ts", import.meta.url)) } },
  define: {
    __VOXGATE_WORKLETS__: '"inline"',
    __VOXGATE_CAPTURE_WORKLET__: '""',
    __VOXGATE_PLAYBACK_WORKLET__: '""',
  },
});
