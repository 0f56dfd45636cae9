// POST /api/voxgate/session: mint a single-use voxgate session token for the browser.
//
// The operator's credentials stay here, on the server: the gateway's JWT (or the secret that
// signs one) never reaches the page. The browser gets a `vxs_…` token that opens ONE /ws
// connection within a minute; the client asks for a new one for every (re)connection.
//
// Environment (server only):
//   VOXGATE_URL          the gateway as this server reaches it, e.g. http://127.0.0.1:8000
//   VOXGATE_JWT_SECRET   the gateway's HS256 secret: a short-lived JWT is signed per request
//   VOXGATE_JWT          or: a ready-made JWT to present instead
import { createHmac } from "node:crypto";

export const dynamic = "force-dynamic";

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** HS256 JWT, 60 s: what `voxgate token --user ID` makes. */
function signJwt(secret: string, userId: string): string {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = base64url(JSON.stringify({ sub: userId, iat: now, exp: now + 60 }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

export async function POST(): Promise<Response> {
  const gateway = process.env.VOXGATE_URL ?? "http://127.0.0.1:8000";
  // Your app knows who is signed in: use that user's id. The demo has one user.
  const userId = "nextjs-demo-user";
  const secret = process.env.VOXGATE_JWT_SECRET;
  const jwt = process.env.VOXGATE_JWT ?? (secret ? signJwt(secret, userId) : null);
  let answer: Response;
  try {
    answer = await fetch(`${gateway}/api/realtime/session`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...(jwt ? { Authorization: `Bearer ${jwt}` } : {}) },
      body: "{}",
      cache: "no-store",
    });
  } catch {
    return Response.json({ error: "The voice gateway cannot be reached." }, { status: 502 });
  }
  if (!answer.ok) {
    return Response.json({ error: `The voice gateway refused a session (${answer.status}).` }, { status: 502 });
  }
  const { token, expiresAt } = (await answer.json()) as { token: string; expiresAt: number };
  return Response.json({ token, expiresAt }, { headers: { "Cache-Control": "no-store" } });
}
