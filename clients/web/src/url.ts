import { VoxgateError } from "./errors";

/** Accept ws(s)://, http(s):// or a path; default to this page's host at /ws.
 * Called when a client is created, never at module load, so server rendering can import the package. */
export function resolveSocketUrl(url?: string): string {
  const loc = globalThis.location as Location | undefined;
  if (!url) {
    if (!loc) throw new VoxgateError("bad_request", "Pass the server URL: new VoxgateClient({url})");
    return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
  }
  const parsed = new URL(url, loc ? loc.href : undefined);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  return parsed.toString();
}
