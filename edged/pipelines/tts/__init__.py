"""Speech synthesis: text or SSML → normalised words → phonemes → the voice → PCM chunks."""

from edged.pipelines.tts.synthesizer import (
    AudioChunk,
    SynthesisRequest,
    TtsModel,
    Voice,
)

__all__ = ["AudioChunk", "SynthesisRequest", "TtsModel", "Voice"]
