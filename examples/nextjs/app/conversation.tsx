"use client";

// The conversation: the hook, both transcripts, an interrupt button and a text box.
import { useVoxgate } from "@voxgate/react";
import { useEffect, useState, type FormEvent } from "react";

/** Asked before every connection: single-use tokens cannot be reused for a reconnect. */
async function sessionToken(): Promise<string> {
  const answer = await fetch("/api/voxgate/session", { method: "POST" });
  const body = (await answer.json()) as { token?: string; error?: string };
  if (!answer.ok || !body.token) throw new Error(body.error ?? `token request failed (${answer.status})`);
  return body.token;
}

export function Conversation({ gatewayUrl }: { gatewayUrl: string }) {
  const [hydrated, setHydrated] = useState(false);
  const [voiceProcessing, setVoiceProcessing] = useState(true);
  const [text, setText] = useState("");
  const voice = useVoxgate({ url: gatewayUrl, token: sessionToken });
  useEffect(() => setHydrated(true), []);

  const start = (microphone: boolean) =>
    voice.start({
      microphone,
      echoCancellation: voiceProcessing,
      noiseSuppression: voiceProcessing,
      autoGainControl: voiceProcessing,
    });

  const send = async (event: FormEvent) => {
    event.preventDefault();
    const message = text.trim();
    if (!message) return;
    setText("");
    if (voice.status === "disconnected" && !(await start(false))) return; // typing opens a text session
    await voice.sendUserMessage(message);
  };

  return (
    <section data-testid="app" data-ready={hydrated}>
      <p>
        <span data-testid="status" data-status={voice.status}>{voice.status}</span>{" "}
        <span data-testid="audio-mode" data-mode={voice.audioMode}>audio: {voice.audioMode}</span>{" "}
        <span data-testid="assistant-speaking" data-active={voice.isSpeaking}>
          {voice.isSpeaking ? "🔊 assistant speaking" : ""}
        </span>{" "}
        <span data-testid="user-speaking" data-active={voice.isUserSpeaking}>
          {voice.isUserSpeaking ? "🎙 you are speaking" : ""}
        </span>
      </p>
      <label>
        <input
          data-testid="voice-processing"
          type="checkbox"
          checked={voiceProcessing}
          onChange={(e) => setVoiceProcessing(e.target.checked)}
        />{" "}
        Browser voice processing (echo cancellation, noise suppression, gain)
      </label>
      <p>
        {voice.status === "disconnected" ? (
          <button data-testid="start" onClick={() => void start(true)}>Start talking</button>
        ) : (
          <button data-testid="stop" onClick={() => void voice.stop()}>Stop</button>
        )}{" "}
        <button data-testid="interrupt" disabled={!voice.isSpeaking} onClick={() => void voice.interrupt()}>
          Interrupt
        </button>
      </p>
      {voice.error && <p role="alert" data-testid="error">{voice.error.message}</p>}
      {voice.audioNotice && <p data-testid="notice">{voice.audioNotice}</p>}
      {voice.partial && <p data-testid="partial"><i>{voice.partial}…</i></p>}
      <ol data-testid="transcript">
        {voice.transcript.map((turn) => (
          <li key={turn.itemId} data-role={turn.role} data-final={turn.final} data-interrupted={turn.interrupted}>
            <b>{turn.role === "user" ? "You" : "Assistant"}:</b> <span className="text">{turn.text}</span>
            {turn.interrupted && <i> (interrupted)</i>}
          </li>
        ))}
      </ol>
      <form onSubmit={send}>
        <input data-testid="text-input" value={text} onChange={(e) => setText(e.target.value)} placeholder="Type a message" />{" "}
        <button data-testid="send" type="submit">Send</button>
      </form>
    </section>
  );
}
