import Link from "next/link";

export default function About() {
  return (
    <main>
      <h1>About</h1>
      <p data-testid="left">You left the conversation: the microphone and the connection are closed.</p>
      <Link href="/">Back to the conversation</Link>
    </main>
  );
}
