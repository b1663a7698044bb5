# edged's settings in a pod (mounted at /etc/edged/config.sh; `edged config` lists them all).
# The image's packs are the models: `edged init` (the init container) builds their RMIRs and
# deploys them into the /models volume. To serve your own RMIRs instead, put them in the
# volume's rmir/ folder and set use_existing_rmirs=true.
model_loc="/models"
use_existing_rmirs=false
models_asr=( "builtin:moonshine-base-en" )
models_tts=( "builtin:piper-joe-medium" )
models_vad=( "builtin:silero-vad" )
backend=cpu
# The container's CPU request: ONNX Runtime would otherwise size its pool to the node's cores.
ort_intra_op_threads=2
listen_address="0.0.0.0"
riva_speech_api_port=50051
metrics_port=8002
# Wyoming (Home Assistant) is for a box on a LAN: a pod answers gRPC only, and never multicasts.
wyoming_enabled=false
# SIGTERM lets open streams finish this long. The pod's terminationGracePeriodSeconds (60) covers
# the preStop drain (`edged drain --wait 30`) and this, with room to spare.
shutdown_grace_s=15
# The capacity behind edged_load_ratio: the HPA keeps the busiest service near 60 % of these.
asr_max_streams=16
tts_max_streams=8
local_mic_enabled=false
local_speaker_enabled=false
