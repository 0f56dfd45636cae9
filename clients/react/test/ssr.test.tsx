// @vitest-environment node
// Server rendering: no window, no document, no WebSocket. Importing both packages and rendering
// a component that uses the hook must work, and must render the idle state.
import { renderToString } from "react-dom/server";
import { expect, it } from "vitest";
import { useVoxgate } from "../src/index";

function Talk() {
  const voice = useVoxgate({ url: "wss://voice.example.com/ws", token: async () => "t" });
  return <button data-status={voice.status} disabled={voice.isConnected}>{voice.transcript.length}</button>;
}

it("renders on the server without touching browser globals", () => {
  expect(typeof (globalThis as { window?: unknown }).window).toBe("undefined");
  const html = renderToString(<Talk />);
  expect(html).toContain('data-status="disconnected"');
  expect(html).toContain(">0<");
});
