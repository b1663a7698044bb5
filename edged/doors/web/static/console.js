// edged's browser console: dictation and speech over Riva's realtime WebSocket API, server status.
"use strict";
const $ = (id) => document.getElementById(id);
window.edged = { samplesReceived: 0, speechDone: 0, interims: 0, finals: [], speakers: [], errors: [],
  speakerModel: false };

function wsUrl(intent) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/realtime?intent=" + intent;
}

async function openSocket(kind, intent) {
  // The session endpoint hands out a client secret when the server has an API key.
  const key = $("apikey").value.trim();
  const headers = { "Content-Type": "application/json" };
  if (key) headers.Authorization = "Bearer " + key;
  const minted = await fetch("/v1/realtime/" + kind, { method: "POST", headers, body: "{}" });
  const session = await minted.json();
  if (!minted.ok) throw new Error(session.detail || minted.statusText);
  const secret = session.client_secret && session.client_secret.value;
  const ws = new WebSocket(wsUrl(intent), secret ? ["realtime", "realtime-token." + secret] : undefined);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("WebSocket failed")); });
  return { ws, session };
}

function b64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// Dictation: microphone -> AudioWorklet -> pcm16 -> input_audio_buffer.append/commit.
let dictation = null;
async function startDictation() {
  const state = $("dictation-state");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: false,
    noiseSuppression: false, autoGainControl: false } });
  const audio = new AudioContext();
  await audio.audioWorklet.addModule("/static/worklet.js");
  const { ws, session } = await openSocket("transcription_sessions", "transcription");
  session.input_audio_format = "pcm16";
  session.input_audio_params = { sample_rate_hz: audio.sampleRate, num_channels: 1 };
  // With a speaker model deployed, each final says who spoke it (a colour per speaker).
  if (window.edged.speakerModel) session.speaker_diarization = { enable_speaker_diarization: true };
  // a picked language leaves the model to the server: the first that recognises it
  if ($("language").value) Object.assign(session.input_audio_transcription, { language: $("language").value, model: "" });
  ws.send(JSON.stringify({ type: "transcription_session.update", session }));
  const source = audio.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(audio, "capture");
  source.connect(node);
  node.port.onmessage = (e) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    const f = e.data, pcm = new Int16Array(f.length);
    for (let i = 0; i < f.length; i++) pcm[i] = Math.max(-1, Math.min(1, f[i])) * 0x7fff;
    ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: b64(new Uint8Array(pcm.buffer)) }));
    ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
  };
  ws.onmessage = (e) => {
    const ev = JSON.parse(e.data);
    if (ev.type === "conversation.item.input_audio_transcription.delta") {
      $("interim").textContent = ev.delta;  // replaced in place until its final comes
      window.edged.interims += 1;
    } else if (ev.type === "conversation.item.input_audio_transcription.completed") {
      $("interim").textContent = "";
      // the last (is_last_result) carries the whole conversation's text again, for Riva's clients
      if (ev.transcript && !ev.is_last_result) showFinal(ev);
      if (ev.is_last_result) ws.close();
    } else if (ev.type === "error") {
      window.edged.errors.push(ev.error.message); state.textContent = ev.error.message;
    }
  };
  ws.onclose = () => { stop(); state.textContent = "idle"; $("dictate").textContent = "Start dictation"; };
  function stop() { node.port.onmessage = null; source.disconnect(); stream.getTracks().forEach((t) => t.stop()); audio.close(); }
  dictation = ws;
  state.textContent = "listening";
  $("dictate").textContent = "Stop dictation";
}

const SPEAKER_COLOURS = 8;  // .speaker-0 ... .speaker-7 in console.css, then round again

function showFinal(ev) {
  // A final, in its speaker's colour (its label as a tooltip) where the session labels speakers.
  const span = document.createElement("span");
  span.textContent = ev.transcript + " ";
  if (ev.speaker) {
    span.className = "speaker speaker-" + ((ev.speaker_tag - 1) % SPEAKER_COLOURS);
    span.title = span.dataset.speaker = ev.speaker;
  }
  $("finals").appendChild(span);
  window.edged.finals.push(ev.transcript);
  window.edged.speakers.push(ev.speaker || "");
}

function stopDictation() {
  if (dictation && dictation.readyState === WebSocket.OPEN) {
    dictation.send(JSON.stringify({ type: "input_audio_buffer.done" }));
    $("dictation-state").textContent = "finishing";
  }
  dictation = null;
}

$("dictate").onclick = () => (dictation ? stopDictation() : startDictation().catch((e) => {
  window.edged.errors.push(String(e)); $("dictation-state").textContent = String(e); }));

// Speech: text -> input_text.append/commit/done; speech.data chunks are played as they arrive.
let player = null;
async function speak() {
  const state = $("speech-state");
  player = player || new AudioContext();
  await player.resume();
  const { ws } = await openSocket("synthesis_sessions", "synthesize");
  let rate = 22050, next = 0;
  ws.onmessage = (e) => {
    const ev = JSON.parse(e.data);
    if (ev.type === "synthesize_session.updated") {
      rate = ev.session.output_audio_params.sample_rate_hz || rate;
      ws.send(JSON.stringify({ type: "input_text.append", text: $("text").value }));
      ws.send(JSON.stringify({ type: "input_text.commit" }));
      ws.send(JSON.stringify({ type: "input_text.done" }));
      state.textContent = "speaking";
    } else if (ev.type === "conversation.item.speech.data") {
      const bytes = Uint8Array.from(atob(ev.audio), (c) => c.charCodeAt(0));
      const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
      const buf = player.createBuffer(1, pcm.length, rate), ch = buf.getChannelData(0);
      for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 0x8000;
      const src = player.createBufferSource();
      src.buffer = buf; src.connect(player.destination);
      next = Math.max(next, player.currentTime);
      src.start(next); next += buf.duration;
      window.edged.samplesReceived += pcm.length;
    } else if (ev.type === "conversation.item.speech.completed" && ev.is_last_result) {
      window.edged.speechDone += 1; state.textContent = "done"; ws.close();
    } else if (ev.type === "error") {
      window.edged.errors.push(ev.error.message); state.textContent = ev.error.message;
    }
  };
  ws.send(JSON.stringify({ type: "synthesize_session.update",
    session: { input_text_synthesis: voicePicked() } }));
}
// The picked voice and its language (the session's default language is the first voice's).
function voicePicked() {
  const option = $("voice").selectedOptions[0];
  return option ? { voice_name: option.value, language_code: option.dataset.language } : {};
}
$("speak").onclick = () => speak().catch((e) => { window.edged.errors.push(String(e)); $("speech-state").textContent = String(e); });

async function authed(path) {
  const key = $("apikey").value.trim();
  const r = await fetch(path, { headers: key ? { Authorization: "Bearer " + key } : {} });
  if (!r.ok) throw new Error(r.statusText);
  return r.json();
}

async function loadVoices() {
  const voices = await authed("/v1/audio/list_voices");
  const select = $("voice");
  select.innerHTML = "";
  for (const [lang, entry] of Object.entries(voices))
    for (const v of entry.voices) {
      const option = new Option(v + " (" + lang + ")", v);
      option.dataset.language = lang;
      select.add(option);
    }
}

// Languages the deployed ASR models recognise ("multi": a multilingual model identifies it).
async function loadLanguages() {
  const models = await authed("/v1/models");
  const select = $("language"), seen = new Set();
  select.innerHTML = "";
  for (const m of models.data)
    if (m.tasks.includes("transcribe"))
      for (const lang of m.languages)
        if (!seen.has(lang)) {
          seen.add(lang);
          select.add(new Option(lang === "multi" ? "any language (identify)" : lang, lang));
        }
}

async function refreshStatus() {
  try {
    const s = await authed("/v1/edged/status");
    const health = $("health");
    health.textContent = s.health; health.className = "badge " + (s.health === "SERVING" ? "ok" : "bad");
    window.edged.speakerModel = (s.models || []).some((m) => m.pipeline === "speaker");
    $("models").innerHTML = (s.models || []).map((m) =>
      `<tr><td>${m.name}</td><td>${m.state}</td><td>${Math.round(m.memory_mb || 0)}</td></tr>`).join("");
    $("streams").textContent = "Streams: " + (s.streams || []).map((c) =>
      `${c.service} ${c.active || 0}/${c.limit || "∞"}`).join(", ");
  } catch (e) { $("health").textContent = "unreachable"; $("health").className = "badge bad"; }
}

loadVoices().catch(() => {});
loadLanguages().catch(() => {});
refreshStatus();
setInterval(refreshStatus, 2000);
