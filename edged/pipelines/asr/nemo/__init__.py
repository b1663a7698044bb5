"""NeMo speech recognisers (RNN-T, TDT and CTC BPE models exported by NeMo to ONNX).

`features` computes NeMo's log-mel preprocessor in numpy, `decoders` holds the batched greedy
decoders over the exported networks, and `recogniser.NemoRecogniser` joins them behind what
AsrModel uses of a recogniser. The RMIR manifest they read is built by edged.importers.nemo.
"""

NEMO_FAMILIES = frozenset({"nemo-rnnt", "nemo-tdt", "nemo-ctc"})
"""Manifest model families served by NemoRecogniser."""
