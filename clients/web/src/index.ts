// @voxgate/client: a typed browser client for the voxgate realtime voice gateway.
//
// Nothing here touches `window`, `document` or audio at module load: importing the package in
// a server-rendered component is safe; a client is only created in the browser.

export { VoxgateClient } from "./client";
export type { ClientDebug } from "./client";
export { ProtocolConnection, PROTOCOL_VERSION, SUBPROTOCOL, BEARER_SUBPROTOCOL_PREFIX } from "./connection";
export type { ConnectionHooks, ConnectionOptions } from "./connection";
export type { PlaybackState, CaptureState } from "./audio";
export { VoxgateError, isVoxgateError, CLOSE_SENTENCES } from "./errors";
export { resolveSocketUrl } from "./url";
export type * from "./types";
