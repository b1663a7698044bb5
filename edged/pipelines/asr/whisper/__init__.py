"""Whisper recognition: log-mel features, its byte-level BPE tokenizer, and decoding with language identification."""
