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

# Inference backend: `auto` uses TensorRT where TensorRT and an NVIDIA GPU exist, otherwise ONNX
# Runtime on the CPU.
# Accepts one of: auto, cpu, tensorrt.
backend=auto

# ONNX Runtime threads within one operator; 0 lets ONNX Runtime choose.
# Accepts an integer of at least 0.
ort_intra_op_threads=0

# ONNX Runtime threads running independent operators in parallel.
# Accepts an integer of at least 0.
ort_inter_op_threads=1

# TCP port of the Riva-compatible gRPC API.
# Accepts an integer from 1 to 65535.
riva_speech_api_port=50051

# Address the gRPC API listens on; `0.0.0.0` for the whole LAN, `127.0.0.1` for this machine only.
# Accepts any text.
listen_address="0.0.0.0"

# Least severe log level shown.
# Accepts one of: DEBUG, INFO, WARNING, ERROR.
log_level=INFO

# Seconds a download may go without progress before it is retried.
# Accepts an integer from 1 to 3600.
download_timeout_s=30

# How many times a failed download is retried (resuming).
# Accepts an integer from 0 to 20.
download_retries=4
