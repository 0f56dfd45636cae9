// The voxgate page: wires the VoxgateClient (voxgate.js) to the controls, indicators and
// transcript. All protocol and audio work lives in the client; this file is only the UI.

import { VoxgateClient } from "./voxgate.js";

const $ = (id) => document.getElementById(id);
const els = {
  status: $("status") || document.querySelector('[data-testid="status"]'),
  start: $("start"),
  stop: $("stop"),
  interrupt: $("interrupt"),
  hold: $("hold"),
  floor: $("floor"),
  talk: $("talk"),
  mode: $("mode"),
  engineRow: $("engine-row"),
  engine: $("engine"),
  engineBadge: $("engine-badge"),
  tokenRow: $("token-row"),
  token: $("token"),
  echo: $("opt-echo"),
  noise: $("opt-noise"),
  gain: $("opt-gain"),
  volume: $("volume"),
  mute: $("mute"),
  error: $("error"),
  errorText: $("error-text"),
  errorClose: $("error-close"),
  notice: $("notice"),
  transcript: $("transcript"),
  empty: $("empty"),
  composer: $("composer"),
  input: $("text-input"),
  send: $("send"),
  hint: $("hint"),
  orb: $("orb"),
  meter: $("mic-meter"),
  outMeter: $("out-meter"),
  user: document.querySelector('[data-testid="user-speaking"]'),
  assistant: document.querySelector('[data-testid="assistant-speaking"]'),
};
const statusEl = document.querySelector('[data-testid="status"]');

const STATUS_TEXT = {
  disconnected: "Not connected",
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
};

// ------------------------------------------------------------------ settings (remembered)

const prefs = loadPrefs();
function loadPrefs() {
  try {
    return JSON.parse(localStorage.getItem("voxgate.prefs") || "{}");
  } catch {
    return {};
  }
}
function savePrefs() {
  try {
    localStorage.setItem("voxgate.prefs", JSON.stringify(prefs));
  } catch {
    /* private mode: settings just are not remembered */
  }
}

const params = new URLSearchParams(location.search);
const initialMode = params.get("mode") || prefs.mode || "server_vad";
setModeRadio(initialMode === "manual" ? "manual" : "server_vad");
els.echo.checked = prefs.echoCancellation !== false;
els.noise.checked = prefs.noiseSuppression !== false;
els.gain.checked = prefs.autoGainControl !== false;
els.volume.value = String(Math.round((prefs.volume ?? 1) * 100));
setMuteButton(!!prefs.muted);
els.token.value = params.get("token") || sessionStorage.getItem("voxgate.token") || "";

// ------------------------------------------------------------------ client

const prebuffer = Number(params.get("prebufferMs"));
const client = new VoxgateClient({
  prebufferMs: Number.isFinite(prebuffer) && params.has("prebufferMs") ? prebuffer : 80,
});
client.setVolume(prefs.volume ?? 1);
client.setMuted(!!prefs.muted);

/** Test and debugging hooks (read-only views of live numbers). */
window.voxgateDebug = {
  client,
  get playback() {
    return client.debug.playback;
  },
  get capture() {
    return client.debug.capture;
  },
  get events() {
    return client.debug.events;
  },
  get sent() {
    return client.debug.sent;
  },
  get interruptRequestedAt() {
    return client.debug.interruptRequestedAt;
  },
  get lastInterrupt() {
    return client.debug.lastInterrupt;
  },
  get audioMode() {
    return client.audioMode;
  },
};

let serverConfig = { engines: [], defaultEngine: null, auth: "none" };
loadServerConfig();

async function loadServerConfig() {
  try {
    const res = await fetch("/api/config", { headers: { accept: "application/json" } });
    if (!res.ok) return;
    serverConfig = { ...serverConfig, ...(await res.json()) };
  } catch {
    return; // an older gateway without /api/config: one engine, no choice to show
  }
  const engines = Array.isArray(serverConfig.engines) ? serverConfig.engines : [];
  if (engines.length > 1) {
    els.engine.replaceChildren(
      ...engines.map((name) => {
        const opt = document.createElement("option");
        opt.value = name;
        opt.textContent = engineLabel(name);
        return opt;
      }),
    );
    const wanted = params.get("engine") || prefs.engine || serverConfig.defaultEngine || engines[0];
    els.engine.value = engines.includes(wanted) ? wanted : engines[0];
    els.engineRow.hidden = false;
  }
  if (serverConfig.auth === "jwt") els.tokenRow.hidden = false;
}

function engineLabel(name) {
  return (
    {
      cascade: "Offline (cascade)",
      openai: "OpenAI Realtime",
      "openai-live": "OpenAI GPT-Live",
      elevenlabs: "ElevenLabs",
    }[name] ||
    name.charAt(0).toUpperCase() + name.slice(1)
  );
}

// ------------------------------------------------------------------ status and indicators

let reconnectInfo = "";
client.on((event) => {
  switch (event.type) {
    case "status":
      renderStatus(event.status);
      if (event.status === "connected") {
        reconnectInfo = "";
        if (noticeKind === "reconnecting") showNotice("");
      }
      break;
    case "reconnecting":
      reconnectInfo = `attempt ${event.attempt} of ${event.attempts}`;
      renderStatus(client.status);
      showNotice(
        `The connection dropped. Reconnecting (${reconnectInfo}); your conversation will continue.`,
        "reconnecting",
      );
      break;
    case "ready":
      if (event.session && event.session.engine) {
        els.engineBadge.textContent = engineLabel(event.session.engine);
        els.engineBadge.hidden = false;
      }
      if (event.session && event.session.capabilities && event.session.capabilities.serverVad === false && client.turnMode === "server_vad") {
        showNotice("This engine has no voice detection: use push-to-talk to speak.");
      }
      if (event.session && event.session.capabilities && event.session.capabilities.manualTurns === false) {
        // The engine's model decides when the user has finished (GPT-Live): there is no
        // commit, so push-to-talk is off while it runs.
        setPushToTalkAllowed(false);
        if (client.turnMode === "manual") {
          setModeRadio("server_vad");
          client.setTurnMode("server_vad").catch((err) => showError(err.message || String(err), "error"));
          showNotice("This engine decides by itself when you have finished speaking: just talk (push-to-talk is off for it).");
        }
      }
      break;
    case "speaking":
      renderSpeaking();
      break;
    case "user_speaking":
      renderSpeaking();
      clearTimeout(placeholderTimer);
      if (event.isSpeaking) {
        ensureUserPlaceholder();
      } else {
        // Voice activity without words (a cough, a door): the "…" bubble goes away unless
        // a transcript fills it soon (some engines transcribe after they start replying).
        placeholderTimer = setTimeout(dropEmptyPlaceholders, 8000);
      }
      break;
    case "transcript":
      renderTranscript(event);
      break;
    case "interrupted":
      markInterrupted(event.itemId);
      renderSpeaking();
      break;
    case "response_done":
      dropEmptyPlaceholders();
      break;
    case "error":
      showError(event.message || "Something went wrong.", event.fatal ? "error" : "warning");
      break;
    case "audio_unavailable":
      showError(event.message, "warning");
      updateHint();
      break;
    case "audio_state":
      if (event.state === "suspended" && client.status !== "disconnected") {
        showNotice("The browser paused audio. Click anywhere on the page to turn the sound on.", "suspended");
      } else if (noticeKind === "suspended") {
        showNotice("");
      }
      break;
    case "backpressure":
      if (event.paused) {
        showNotice(
          event.source === "server"
            ? "The server asked to pause: your microphone is on hold for a moment."
            : "The network is slow: your microphone is paused until it catches up.",
          "backpressure",
        );
      } else if (noticeKind === "backpressure") {
        showNotice("");
      }
      document.body.dataset.backpressure = String(!!event.paused);
      break;
    case "turn":
      renderFloor();
      break;
    case "tool_status":
      renderTool(event);
      break;
    case "talking":
      els.talk.setAttribute("aria-pressed", String(event.active));
      els.talk.classList.toggle("is-active", event.active);
      clearTimeout(placeholderTimer);
      if (event.active) ensureUserPlaceholder();
      else placeholderTimer = setTimeout(dropEmptyPlaceholders, 8000);
      renderSpeaking();
      break;
    default:
      break;
  }
  updateControls();
});

function renderStatus(status) {
  statusEl.dataset.status = status;
  let text = STATUS_TEXT[status] || status;
  if (status === "reconnecting" && reconnectInfo) text = `Reconnecting… (${reconnectInfo})`;
  statusEl.querySelector(".status-text").textContent = text;
  document.body.dataset.status = status;
}

function renderSpeaking() {
  const assistant = client.isSpeaking;
  const user = client.isUserSpeaking || (client.turnMode === "manual" && els.talk.classList.contains("is-active"));
  setIndicator(els.assistant, assistant, assistant ? "speaking" : "quiet");
  setIndicator(els.user, user, user ? "speaking" : client.audioMode === "full" ? "listening" : "not speaking");
  els.orb.dataset.state = assistant ? "assistant" : user ? "user" : client.status === "connected" ? "listening" : "idle";
}

const FLOOR_TEXT = {
  idle: "open",
  user: "you",
  assistant: "assistant",
  paused: "assistant paused (listening to you)",
};

/** Who has the floor (the gateway's `turn` events), and whether the assistant is held. */
function renderFloor() {
  const floor = client.status === "connected" ? client.floor : "idle";
  const held = client.status === "connected" && client.isHeld;
  els.floor.dataset.floor = floor;
  els.floor.dataset.held = String(held);
  els.floor.querySelector(".floor-state").textContent = FLOOR_TEXT[floor] || floor;
  els.floor.querySelector(".floor-held").hidden = !held;
  els.hold.setAttribute("aria-pressed", String(held));
  els.hold.querySelector("span").textContent = held ? "Release" : "Hold";
  els.hold.title = held
    ? "Release: the assistant answers now what it heard while held"
    : "Hold: the assistant listens but does not answer until you release it";
}

function setIndicator(el, active, text) {
  el.dataset.active = String(active);
  el.querySelector(".indicator-state").textContent = text;
}

function setPushToTalkAllowed(allowed) {
  const ptt = els.mode.querySelector('input[value="manual"]');
  if (ptt) ptt.disabled = !allowed;
}

function updateControls() {
  const status = client.status;
  if (status === "disconnected") setPushToTalkAllowed(true);
  const live = status === "connected";
  const busy = status === "connecting" || status === "reconnecting";
  els.start.disabled = status !== "disconnected";
  els.stop.disabled = status === "disconnected";
  els.interrupt.disabled = !(live && client.isSpeaking);
  // Hold needs an engine whose turns the gateway can steer (capabilities.turnControl).
  els.hold.disabled = !(live && client.capabilities && client.capabilities.turnControl);
  renderFloor();
  els.send.disabled = !els.input.value.trim() || busy;
  const manual = client.turnMode === "manual";
  // Push-to-talk needs a microphone: no talk button in a text-only session.
  els.talk.hidden = !manual || (status !== "disconnected" && client.audioMode !== "full" && client.audioMode !== "none");
  els.talk.disabled = !(live && client.audioMode === "full");
  els.engine.disabled = status !== "disconnected";
  els.start.querySelector("span").textContent = status === "connecting" ? "Starting…" : "Start";
  updateHint();
}

function updateHint() {
  const status = client.status;
  let html;
  if (status === "disconnected") {
    html = "Press <strong>Start</strong>, allow the microphone, and just talk. Or type below.";
  } else if (status === "connecting") {
    html = "Connecting to the assistant…";
  } else if (status === "reconnecting") {
    html = "Connection lost. Reconnecting…";
  } else if (client.audioMode === "starting") {
    html = "Starting the microphone…";
  } else if (client.audioMode !== "full") {
    html = "Text-only: type your message below.";
  } else if (client.turnMode === "manual") {
    html = "Hold <strong>Hold to talk</strong> (or the <kbd>Space</kbd> bar) while you speak; release to send.";
  } else {
    html = "Listening. Just talk; speak over the assistant to interrupt it.";
  }
  els.hint.innerHTML = html;
}

// Mic level meter: read the live level every animation frame instead of per-event redraws.
function meterLoop() {
  const level = client.status === "connected" ? client.debug.capture.level : 0;
  const scaled = Math.min(1, Math.sqrt(level) * 2.2);
  els.meter.style.transform = `scaleX(${scaled.toFixed(3)})`;
  const out = client.isSpeaking ? Math.min(1, Math.sqrt(client.debug.playback.level || 0) * 2.2) : 0;
  els.outMeter.style.transform = `scaleX(${out.toFixed(3)})`;
  els.orb.style.setProperty("--level", scaled.toFixed(3));
  requestAnimationFrame(meterLoop);
}
requestAnimationFrame(meterLoop);

// ------------------------------------------------------------------ messages to the user

let noticeKind = "";
function showNotice(text, kind = "info") {
  els.notice.textContent = text;
  els.notice.hidden = !text;
  noticeKind = text ? kind : "";
}

function showError(text, kind = "error") {
  els.errorText.textContent = text;
  els.error.dataset.kind = kind;
  els.error.hidden = !text;
}

function clearError() {
  showError("");
}
els.errorClose.addEventListener("click", clearError);

// ------------------------------------------------------------------ transcript

const turns = new Map(); // itemId -> element
let placeholder = null; // a user turn shown while the user speaks, filled by its transcript
let placeholderTimer = null;
let localUserTurns = []; // typed messages waiting for the server's transcript of them

function newTurn(role, itemId) {
  const li = document.createElement("li");
  li.className = "turn";
  li.dataset.role = role;
  if (itemId) li.dataset.itemId = itemId;
  li.dataset.final = "false";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const text = document.createElement("p");
  text.className = "text";
  li.append(who, text);
  els.transcript.append(li);
  els.empty.hidden = true;
  return li;
}

function setTurnText(li, text, final) {
  li.querySelector(".text").textContent = text;
  li.dataset.final = String(final);
  li.classList.toggle("is-partial", !final);
  scrollTranscript();
}

function scrollTranscript() {
  const list = els.transcript;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 120;
  if (nearBottom || list.dataset.follow !== "false") list.scrollTop = list.scrollHeight;
}
els.transcript.addEventListener("scroll", () => {
  const list = els.transcript;
  list.dataset.follow = String(list.scrollHeight - list.scrollTop - list.clientHeight < 40);
});

function ensureUserPlaceholder() {
  if (placeholder && placeholder.isConnected) return;
  placeholder = newTurn("user", null);
  placeholder.classList.add("is-placeholder");
  setTurnText(placeholder, "…", false);
}

function dropEmptyPlaceholders() {
  if (placeholder && placeholder.isConnected && !placeholder.dataset.itemId && !client.isUserSpeaking) {
    placeholder.remove();
    placeholder = null;
  }
  els.empty.hidden = els.transcript.children.length > 0;
}

function normalize(text) {
  return String(text).toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
}

function renderTranscript(event) {
  const { role, itemId, final } = event;
  const text = event.text || "";
  let li = itemId ? turns.get(itemId) : null;
  if (!li && role === "user") {
    // Typed text the server echoes back as a transcript: reuse the bubble we already showed.
    const recent = performance.now() - 15000;
    const match = localUserTurns.find(
      (el) => Number(el.dataset.sentAt) > recent && normalize(el.querySelector(".text").textContent) === normalize(text),
    );
    if (match) {
      li = match;
      localUserTurns = localUserTurns.filter((el) => el !== match);
    } else if (placeholder && placeholder.isConnected && !placeholder.dataset.itemId) {
      li = placeholder; // speech: fill the bubble created when the user started talking
      placeholder.classList.remove("is-placeholder");
      placeholder = null;
    }
  }
  if (!li) {
    if (!text.trim() && !final) return;
    li = newTurn(role, itemId);
  }
  if (itemId) {
    li.dataset.itemId = itemId;
    turns.set(itemId, li);
  }
  if (text || final) setTurnText(li, text || li.querySelector(".text").textContent, final);
}

// Tool activity, as a line of the transcript: "Using get_weather…", then how it ended.
function renderTool(event) {
  const key = `tool:${event.callId}`;
  let li = turns.get(key);
  if (!li) {
    li = newTurn("tool", key);
    li.querySelector(".who").textContent = "Tool";
    turns.set(key, li);
  }
  li.dataset.status = event.status;
  const text = {
    running: `Using ${event.name}…`,
    done: `${event.name}: done (${event.ms} ms)`,
    error: `${event.name} failed: ${event.error || "error"}`,
    cancelled: `${event.name}: cancelled`,
  }[event.status] || `${event.name}: ${event.status}`;
  setTurnText(li, text, event.status !== "running");
}

function markInterrupted(itemId) {
  const li = itemId ? turns.get(itemId) : [...els.transcript.querySelectorAll('[data-role="assistant"]')].pop();
  if (!li || li.dataset.role !== "assistant" || li.dataset.interrupted === "true") return;
  li.dataset.interrupted = "true";
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = "interrupted";
  li.querySelector(".who").append(badge);
}

function clearTranscript() {
  clearTimeout(placeholderTimer);
  els.transcript.replaceChildren();
  turns.clear();
  placeholder = null;
  localUserTurns = [];
  els.empty.hidden = false;
}

// ------------------------------------------------------------------ actions

function startOptions(overrides = {}) {
  const options = {
    turnDetection: { mode: selectedMode() },
    echoCancellation: els.echo.checked,
    noiseSuppression: els.noise.checked,
    autoGainControl: els.gain.checked,
    ...overrides,
  };
  if (!els.engineRow.hidden && els.engine.value) options.engine = els.engine.value;
  const instructions = params.get("instructions");
  if (instructions) options.instructions = instructions;
  // Turn-taking settings from the address (e.g. ?interruptMinMs=250&interruptMinWords=1).
  for (const name of ["minSilenceMs", "maxUtteranceMs", "interruptMinMs", "interruptMinWords", "falseInterruptionMs"]) {
    const value = params.get(name);
    if (value !== null && value !== "" && Number.isFinite(Number(value))) options.turnDetection[name] = Number(value);
  }
  return options;
}

async function start(overrides = {}) {
  clearError();
  showNotice("");
  const token = els.token.value.trim();
  client.token = token || null;
  if (token) sessionStorage.setItem("voxgate.token", token);
  try {
    await client.start(startOptions(overrides));
    return true;
  } catch (err) {
    if (err && err.code !== "stopped") showError(err.message || String(err), "error");
    return false;
  } finally {
    updateControls();
    renderSpeaking();
  }
}

els.start.addEventListener("click", () => {
  clearTranscript();
  start();
});

els.stop.addEventListener("click", async () => {
  await client.stop();
  showNotice("");
  renderSpeaking();
  updateControls();
});

els.interrupt.addEventListener("click", () => {
  client.interrupt();
});

els.hold.addEventListener("click", () => {
  try {
    if (client.isHeld) client.allowNext(true);
    else client.hold();
  } catch (err) {
    showError(err.message || String(err), "warning");
  }
});

els.composer.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = els.input.value.trim();
  if (!text) return;
  if (client.status === "disconnected") {
    // Typing works without a microphone: open a session that only plays the replies.
    clearTranscript();
    const ok = await start({ microphone: false });
    if (!ok) return;
  }
  if (client.status !== "connected") {
    showError("Not connected yet. Wait a moment and send again.", "warning");
    return;
  }
  const li = newTurn("user", null);
  li.classList.add("is-local");
  li.dataset.sentAt = String(performance.now());
  setTurnText(li, text, true);
  localUserTurns.push(li);
  els.input.value = "";
  updateControls();
  try {
    await client.sendUserMessage(text);
  } catch (err) {
    li.remove();
    localUserTurns = localUserTurns.filter((el) => el !== li);
    els.input.value = text;
    showError(err.message || String(err), "error");
  }
});
els.input.addEventListener("input", updateControls);

// Mode: hands-free (server VAD) or push-to-talk (manual commit).
function selectedMode() {
  const checked = els.mode.querySelector("input:checked");
  return checked ? checked.value : "server_vad";
}
function setModeRadio(mode) {
  for (const input of els.mode.querySelectorAll("input")) input.checked = input.value === mode;
}
els.mode.addEventListener("change", async () => {
  const mode = selectedMode();
  prefs.mode = mode;
  savePrefs();
  try {
    await client.setTurnMode(mode);
  } catch (err) {
    showError(err.message || String(err), "error");
  }
  renderSpeaking();
  updateControls();
});

// Push-to-talk: hold the button (mouse, touch, pen) or the space bar; release commits.
els.talk.addEventListener("pointerdown", (event) => {
  if (els.talk.disabled) return;
  event.preventDefault();
  els.talk.setPointerCapture(event.pointerId);
  client.startTalking();
});
for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
  els.talk.addEventListener(type, () => client.stopTalking());
}
els.talk.addEventListener("keydown", (event) => {
  if ((event.key === "Enter" || event.key === " ") && !event.repeat) {
    event.preventDefault();
    client.startTalking();
  }
});
els.talk.addEventListener("keyup", (event) => {
  if (event.key === "Enter" || event.key === " ") {
    event.preventDefault();
    client.stopTalking();
  }
});

function typingTarget(target) {
  return target instanceof HTMLElement && (target.matches("input, textarea, select, [contenteditable]") || target.isContentEditable);
}

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && client.isSpeaking && client.status === "connected") {
    client.interrupt();
    return;
  }
  if (event.code !== "Space" || event.repeat || typingTarget(event.target)) return;
  if (event.target instanceof HTMLButtonElement && event.target !== els.talk) return;
  if (client.turnMode !== "manual" || els.talk.disabled || event.target === els.talk) return;
  event.preventDefault();
  client.startTalking();
});
document.addEventListener("keyup", (event) => {
  if (event.code !== "Space" || typingTarget(event.target) || event.target === els.talk) return;
  if (client.turnMode === "manual") client.stopTalking();
});

// Audio settings.
for (const [el, key] of [
  [els.echo, "echoCancellation"],
  [els.noise, "noiseSuppression"],
  [els.gain, "autoGainControl"],
]) {
  el.addEventListener("change", () => {
    prefs[key] = el.checked;
    savePrefs();
  });
}
els.volume.addEventListener("input", () => {
  const volume = Number(els.volume.value) / 100;
  prefs.volume = volume;
  savePrefs();
  client.setVolume(volume);
  if (volume > 0 && prefs.muted) setMuted(false);
});
els.mute.addEventListener("click", () => setMuted(!prefs.muted));
function setMuted(muted) {
  prefs.muted = muted;
  savePrefs();
  client.setMuted(muted);
  setMuteButton(muted);
}
function setMuteButton(muted) {
  els.mute.setAttribute("aria-pressed", String(muted));
  els.mute.textContent = muted ? "Unmute" : "Mute";
}
els.engine.addEventListener("change", () => {
  prefs.engine = els.engine.value;
  savePrefs();
});

// Browsers may keep audio suspended until a gesture: any click turns it back on.
document.addEventListener("pointerdown", () => client.resumeAudio(), { capture: true });

renderStatus(client.status);
renderSpeaking();
updateControls();
document.body.dataset.ready = "true";
