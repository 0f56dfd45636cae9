// The smallest useful voxgate app: talk, read both sides, interrupt, type, leave.
//
// The gateway is `?gateway=ws://host:port/ws`, else VITE_VOXGATE_URL, else a local `voxgate serve`.
// This example talks to a gateway without auth (loopback); see examples/nextjs for tokens.
import { useVoxgate } from "@voxgate/react";
import { useEffect, useState, type FormEvent } from "react";

const GATEWAY =
  new URLSearchParams(window.location.search).get("gateway") ??
  (import.meta.env.VITE_VOXGATE_URL as string | undefined) ??
  "ws://127.0.0.1:8000/ws";

export function App() {
  const [open, setOpen] = useState(true);
  const [hydrated, setHydrated] = useState(false);
  useEffect(() => setHydrated(true), []);
  return (
    <main data-testid="app" data-ready={hydrated}>
      <h1>voxgate + Vite</h1>
      <button data-testid="toggle" onClick={() => setOpen((v) => !v)}>
        {open ? "Leave the conversation" : "Open the conversation"}
      </button>
      {open ? <Conversation /> : <p data-testid="left">You left the conversation.</p>}
    </main>
  );
}

function Conversation() {
  const [voiceProcessing, setVoiceProcessing] = useState(true);
  const [text, setText] = useState("");
  const voice = useVoxgate({ url: GATEWAY });

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
    // Typing first opens a text session (no microphone).
    if (voice.status === "disconnected" && !(await start(false))) return;
    await voice.sendUserMessage(message);
  };

  return (
    <section>
      <p>
        <span data-testid="status" data-status={voice.status}>{voice.status}</span>{" "}
        <span data-testid="audio-mode" data-mode={voice.audioMode}>audio: {voice.audioMode}</span>{" "}
        <span data-testid="assistant-speaking" data-active={voice.isSpeaking}>
          {voice.isSpeaking ? "assistant speaking" : ""}
        </span>{" "}
        <span data-testid="user-speaking" data-active={voice.isUserSpeaking}>
          {voice.isUserSpeaking ? "you are speaking" : ""}
        </span>
      </p>
      <label>
        <input
          data-testid="voice-processing"
          type="checkbox"
          checked={voiceProcessing}
          onChange={(e) => setVoiceProcessing(e.target.checked)}
        />
        Browser voice processing (echo cancellation, noise suppression, gain)
      </label>
      <p>
        {voice.status === "disconnected" ? (
          <button data-testid="start" onClick={() => void start(true)}>Start talking</button>
        ) : (
          <button data-testid="stop" onClick={() => void voice.stop()}>Stop</button>
        )}
        <button data-testid="interrupt" disabled={!voice.isSpeaking} onClick={() => void voice.interrupt()}>
          Interrupt
        </button>
      </p>
      {voice.error && <p role="alert" data-testid="error">{voice.error.message}</p>}
      {voice.audioNotice && <p data-testid="notice">{voice.audioNotice}</p>}
      <ol data-testid="transcript">
        {voice.transcript.map((turn) => (
          <li
            key={turn.itemId}
            data-role={turn.role}
            data-final={turn.final}
            data-interrupted={turn.interrupted}
          >
            <b>{turn.role === "user" ? "You" : "Assistant"}:</b> <span className="text">{turn.text}</span>
            {turn.interrupted && <i> (interrupted)</i>}
          </li>
        ))}
      </ol>
      <form onSubmit={send}>
        <input data-testid="text-input" value={text} onChange={(e) => setText(e.target.value)} placeholder="Type a message" />
        <button data-testid="send" type="submit">Send</button>
      </form>
    </section>
  );
}
