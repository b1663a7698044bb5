"""edged: an edge speech appliance daemon (Riva-compatible ASR and TTS without containers)."""

import os

# numpy's BLAS only sees small matrices in edged (the VAD's LSTM steps, alignment): threads
# there cost more in wake-ups than they save, on cores ONNX Runtime is using. It takes effect
# when edged is imported before numpy (the CLI and the daemon); a value already set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
