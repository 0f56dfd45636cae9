import Link from "next/link";
import { Conversation } from "./conversation";

// Rendered per request, so the gateway address comes from the server's environment at run
// time (not baked into the build).
export const dynamic = "force-dynamic";

export default function Home() {
  const gatewayUrl = process.env.VOXGATE_PUBLIC_WS_URL ?? "ws://127.0.0.1:8000/ws";
  return (
    <main>
      <h1>voxgate + Next.js</h1>
      <p>
        <Link href="/about" data-testid="leave">
          Leave (navigate to another page)
        </Link>
      </p>
      <Conversation gatewayUrl={gatewayUrl} />
    </main>
  );
}
