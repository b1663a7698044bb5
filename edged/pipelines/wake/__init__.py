"""Wake-word detection: microWakeWord models listening to 16 kHz audio (edged.pipelines.wake.detector)."""
