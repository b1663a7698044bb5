"""Who is speaking: speaker embeddings (features, encoder), clustering and diarization of utterances."""
