"""Voice activity (Silero VAD) and endpointing with Riva's EndpointingConfig semantics.

The VAD gives a speech probability for every 32 ms window of 16 kHz audio. The endpointer
averages it over sliding histories: an utterance starts when the mean over the last
`start_history_ms` reaches `start_threshold`, and ends when the mean over the last
`stop_history_ms` falls below `stop_threshold`. The shorter end-of-utterance pair
(`stop_history_eou_ms`, `stop_threshold_eou`; or that long without a speech window) fires first
and marks the likely end, so the final decode can start before the endpoint confirms it. An
utterance of at least `pause_split_ms` ends at such a likely end when the speech goes on after
it (the final decode has started already), and one longer than `max_utterance_ms` is split at
its quietest window (chosen a second ahead, so that the final decode can start early there too).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edged.backends import Session
from edged.errors import ModelLoadError
from edged.pipelines.asr.audio import MODEL_RATE

_LOGGER = logging.getLogger(__name__)

WINDOW = 512
"""Samples per VAD window at MODEL_RATE (32 ms)."""
WINDOW_MS = WINDOW * 1000 // MODEL_RATE
_CONTEXT = 64


@dataclass(frozen=True)
class EndpointParams:
    """Endpointing settings (Riva's EndpointingConfig, plus the forced-split length)."""

    start_history_ms: int = 200
    start_threshold: float = 0.5
    stop_history_ms: int = 700
    stop_threshold: float = 0.35
    stop_history_eou_ms: int = 300
    stop_threshold_eou: float = 0.35
    max_utterance_ms: int = 8000
    pause_split_ms: int = 4000
    """An utterance at least this long ends at a likely end (eou) when speech resumes (0: never)."""
    speech_threshold: float = 0.5
    """A window counts as speech (for trimming and splits) at this probability or above."""

    @classmethod
    def from_manifest(cls, params: dict[str, Any]) -> EndpointParams:
        """Defaults from a model manifest's `endpointing` parameters (unknown keys ignored)."""
        known = {k: type(getattr(cls(), k))(v) for k, v in params.items() if hasattr(cls(), k)}
        return cls(**known)

    def override(self, **given: float) -> EndpointParams:
        """These settings with the given non-zero values replacing their own (0 = keep)."""
        return replace(self, **{k: type(getattr(self, k))(v) for k, v in given.items() if v})


class Vad:
    """Silero VAD over a stream: 512-sample windows with 64 samples of context and LSTM state.

    The network runs in numpy (`SileroNumpy`) when its graph has Silero's 16 kHz structure: the
    frontend and encoder of every whole window in a chunk at once, then the LSTM window by window.
    Otherwise (another network, weights that cannot be read) every window runs through `session`.
    """

    def __init__(self, session: Session, network: Path | None = None) -> None:
        """`network`: the ONNX file `session` was loaded from, for the numpy path (default: the
        file of an ONNX Runtime session; none for other backends)."""
        names = {i.name for i in session.inputs}
        if not {"input", "state", "sr"} <= names:
            raise ModelLoadError("The VAD network lacks Silero's inputs (input, state, sr); redeploy silero-vad.")
        self.session = session
        self.fast = self._numpy_network(network or _session_file(session))
        """The network in numpy (None: every window runs through the session)."""

    def new_state(self) -> VadState:
        """Fresh state for one stream."""
        return VadState()

    def probabilities(self, state: VadState, audio: np.ndarray) -> np.ndarray:
        """Speech probability of every whole window `audio` completes (the rest is kept)."""
        state.pending = np.concatenate([state.pending, audio]) if len(state.pending) else audio
        count = len(state.pending) // WINDOW
        if not count:
            return np.empty(0, dtype=np.float32)
        # Each window with the 64 samples before it (the previous chunk's last, at the start).
        stream = np.concatenate([state.context, state.pending[:count * WINDOW]]).astype(np.float32, copy=False)
        inputs = np.lib.stride_tricks.sliding_window_view(stream, _CONTEXT + WINDOW)[::WINDOW]
        if self.fast is not None:
            probs, state.lstm = self.fast.run(inputs, state.lstm)
        else:
            probs, state.lstm = self._session_run(inputs, state.lstm)
        state.context = stream[-_CONTEXT:].copy()
        state.pending = state.pending[count * WINDOW:]
        return probs

    def _session_run(self, inputs: np.ndarray, lstm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of `inputs` [windows, 576] and the LSTM state after them, one session
        call per window."""
        probs = np.empty(len(inputs), dtype=np.float32)
        sr = np.array(MODEL_RATE, dtype=np.int64)
        for i, window in enumerate(inputs):
            out = self.session.run({"input": np.ascontiguousarray(window[None, :]), "state": lstm, "sr": sr})
            lstm = out["stateN"]
            probs[i] = float(out["output"].reshape(-1)[0])
        return probs, lstm

    def _numpy_network(self, network: Path | None) -> SileroNumpy | None:
        """The network in numpy if its graph is Silero's and it gives the session's
        probabilities (checked on a second of synthetic audio); None otherwise."""
        if network is None:
            _LOGGER.debug("VAD in the session: its ONNX file is not known.")
            return None
        rng = np.random.default_rng(0)
        t = np.arange(16 * WINDOW + _CONTEXT) / MODEL_RATE
        audio = 0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.2) + 0.05 * rng.standard_normal(len(t))
        inputs = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float32), _CONTEXT + WINDOW)[::WINDOW]
        start = (0.1 * rng.standard_normal((2, 1, 128))).astype(np.float32)
        try:
            import onnx

            fast = SileroNumpy.from_graph(onnx.load(str(network)).graph)
            got, got_state = fast.run(inputs, start)
        except Exception as exc:  # noqa: BLE001 - any graph that cannot be read runs in the session
            _LOGGER.debug("VAD in the session: %s is not Silero's graph as expected (%s).", network, exc)
            return None
        want, want_state = self._session_run(inputs, start)
        error = max(float(np.abs(want - got).max()), float(np.abs(want_state - got_state).max()))
        if not error <= _FAST_TOLERANCE:
            _LOGGER.debug("VAD in the session: the numpy network differs from it by %.2g.", error)
            return None
        return fast


_FAST_TOLERANCE = 1e-4
"""Most difference from the session's probabilities and state the numpy network may have."""


def _session_file(session: Session) -> Path | None:
    """The ONNX file an ONNX Runtime session was loaded from (None for other sessions)."""
    path = getattr(session, "onnx_path", None)
    return path if isinstance(path, Path) else None


class _GraphMismatch(Exception):
    """The VAD graph is not Silero's as SileroNumpy reads it."""


@dataclass(frozen=True)
class _Conv:
    """A 1-D convolution over time, channels last: weight [kernel * in, out]."""

    weight: np.ndarray
    bias: np.ndarray | None
    kernel: int
    stride: int
    pads: tuple[int, int]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """[windows, time, in] -> [windows, time', out]."""
        windows, time, channels = x.shape
        if any(self.pads):
            padded = np.zeros((windows, time + sum(self.pads), channels), dtype=np.float32)
            padded[:, self.pads[0]:self.pads[0] + time] = x
            x = padded
        else:
            x = np.ascontiguousarray(x, dtype=np.float32)
        steps = (x.shape[1] - self.kernel) // self.stride + 1
        # The `kernel` time steps under each output step lie contiguous in x: one row each.
        # (Strides from the shape: numpy's strides of length-1 axes can be anything.)
        item = x.itemsize
        rows = np.lib.stride_tricks.as_strided(
            x, (windows, steps, self.kernel * channels),
            (x.shape[1] * channels * item, self.stride * channels * item, item), writeable=False)
        y = np.ascontiguousarray(rows).reshape(windows * steps, -1) @ self.weight
        if self.bias is not None:
            y += self.bias
        return y.reshape(windows, steps, -1)


class SileroNumpy:
    """Silero VAD's 16 kHz network in numpy, read from its ONNX graph.

    Per window of 576 samples: reflect padding, the STFT (a strided convolution), its magnitude,
    four convolutions with ReLU, one LSTM step, ReLU, a 1x1 convolution and a sigmoid averaged
    over time. Everything but the LSTM is computed for all windows at once.
    """

    def __init__(self, pads: tuple[int, int], stft: _Conv, encoder: list[_Conv],
                 lstm: tuple[np.ndarray, np.ndarray, np.ndarray], head: tuple[np.ndarray, float]) -> None:
        self.pads = pads
        """Reflect padding of the input (before, after)."""
        self.stft = stft
        self.encoder = encoder
        w, r, b = lstm
        hidden = r.shape[1]
        # Gates in ONNX order (input, output, forget, cell). The sigmoid gates' rows are halved,
        # so that one tanh gives all four: sigmoid(x) = 0.5 + 0.5 * tanh(x / 2).
        scale = np.ones(4 * hidden, dtype=np.float32)
        scale[:3 * hidden] = 0.5
        self.w_in = (w * scale[:, None]).T.astype(np.float32)
        self.w_rec = (r * scale[:, None]).T.astype(np.float32)
        self.bias = ((b[:4 * hidden] + b[4 * hidden:]) * scale).astype(np.float32)
        self.hidden = hidden
        self.head_weight, self.head_bias = head

    @classmethod
    def from_graph(cls, graph: Any) -> SileroNumpy:
        """Read the 16 kHz branch of a Silero VAD graph (raises _GraphMismatch if it is not)."""
        from onnx import numpy_helper

        branch = _sr_branch(graph, MODEL_RATE)
        nodes = list(_walk(branch))
        consts = {t.name: numpy_helper.to_array(t) for t in _initializers(graph, branch)}
        for node in nodes:
            if node.op_type == "Constant" and node.output:
                consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
        producers = {out: node for node in nodes for out in node.output}
        consumers: dict[str, list[Any]] = {}
        for node in nodes:
            for name in node.input:
                consumers.setdefault(name, []).append(node)

        pad = _only(n for n in nodes if n.op_type == "Pad")
        pad_sizes = consts[pad.input[1]].tolist()
        if _attrs(pad).get("mode") != b"reflect" or len(pad_sizes) != 4 or pad_sizes[0] or pad_sizes[2]:
            raise _GraphMismatch(f"padding {pad_sizes} {_attrs(pad).get('mode')}")
        convs = [n for n in nodes if n.op_type in ("Conv", "FusedConv")]
        layers = [_conv(n, consts, consumers) for n in convs]
        if [act for _, act in layers] != [None] + ["Relu"] * (len(layers) - 2) + ["Sigmoid"]:
            raise _GraphMismatch(f"convolutions {[act for _, act in layers]}")
        stft = layers[0][0]
        if stft.bias is not None or any(stft.pads) or stft.weight.shape[1] % 2:
            raise _GraphMismatch("the STFT convolution")
        if not any(n.op_type == "Sqrt" for n in nodes):
            raise _GraphMismatch("no STFT magnitude")
        head, _ = layers[-1]
        head_input = producers.get(convs[-1].input[0])
        if (head.kernel != 1 or head.weight.shape[1] != 1 or head.bias is None
                or head_input is None or head_input.op_type != "Relu"):
            raise _GraphMismatch("the output convolution")

        lstms = [n for n in nodes if n.op_type == "LSTM"]
        weights = [tuple(consts[name] for name in n.input[1:4]) for n in lstms]
        if not lstms or any(not all(np.array_equal(a, b) for a, b in zip(weights[0], w)) for w in weights):
            raise _GraphMismatch(f"{len(lstms)} LSTMs with different weights")
        for node in lstms:
            attrs = _attrs(node)
            if (attrs.get("direction", b"forward") != b"forward" or attrs.get("input_forget", 0)
                    or "activations" in attrs or "clip" in attrs or attrs.get("layout", 0)
                    or (len(node.input) > 7 and node.input[7])):
                raise _GraphMismatch(f"LSTM attributes {sorted(attrs)}")
        w, r, b = (a[0] for a in weights[0])
        return cls((int(pad_sizes[1]), int(pad_sizes[3])), stft, [c for c, _ in layers[1:-1]], (w, r, b),
                   (head.weight[:, 0].copy(), float(head.bias[0])))

    def run(self, inputs: np.ndarray, lstm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of `inputs` [windows, samples] and the LSTM state [2, 1, hidden] after them."""
        before, after = self.pads
        x = np.concatenate([inputs[:, before:0:-1], inputs, inputs[:, -2:-2 - after:-1]], axis=1)
        spectrum = self.stft(x[:, :, None])
        half = spectrum.shape[2] // 2
        features = np.sqrt(spectrum[..., :half] ** 2 + spectrum[..., half:] ** 2)
        for conv in self.encoder:
            features = np.maximum(conv(features), 0.0)
        if features.shape[1] != 1:
            raise ValueError(f"the VAD encoder gives {features.shape[1]} steps per window, not 1")
        gates_in = features[:, 0] @ self.w_in + self.bias
        n = self.hidden
        h, c = lstm[0, 0].astype(np.float32), lstm[1, 0].astype(np.float32)
        hs = np.empty((len(inputs), n), dtype=np.float32)
        for i, gate_in in enumerate(gates_in):
            t = np.tanh(gate_in + h @ self.w_rec)
            sig = 0.5 + 0.5 * t[:3 * n]
            c = sig[2 * n:] * c + sig[:n] * t[3 * n:]
            h = sig[n:2 * n] * np.tanh(c)
            hs[i] = h
        logits = np.maximum(hs, 0.0) @ self.head_weight + self.head_bias
        probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return probs, np.stack([h, c])[:, None, :]


def _sr_branch(graph: Any, rate: int) -> Any:
    """The subgraph a Silero graph runs for sample rate `rate` (If on Equal(sr, rate))."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    equals = {n.output[0]: n for n in graph.node if n.op_type == "Equal" and "sr" in n.input}
    for node in graph.node:
        equal = equals.get(node.input[0]) if node.op_type == "If" and node.input else None
        if equal is None:
            continue
        value = next((consts[name] for name in equal.input if name in consts), None)
        if value is not None and int(value) == rate:
            return _attrs(node)["then_branch"]
    raise _GraphMismatch(f"no branch for sr == {rate}")


def _walk(graph: Any) -> Any:
    """Every node of `graph` and of its subgraphs, in order."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g.node:
                yield from _walk(attr.g)


def _initializers(*graphs: Any) -> Any:
    """The initializers of `graphs` and of their subgraphs."""
    for graph in graphs:
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.g.node:
                    yield from _initializers(attr.g)


def _attrs(node: Any) -> dict[str, Any]:
    """A node's attributes as Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _only(nodes: Any) -> Any:
    """The one node of `nodes` (raises _GraphMismatch if there are none or several)."""
    found = list(nodes)
    if len(found) != 1:
        raise _GraphMismatch(f"{len(found)} nodes where one was expected")
    return found[0]


def _conv(node: Any, consts: dict[str, np.ndarray], consumers: dict[str, list[Any]]) -> tuple[_Conv, str | None]:
    """A Conv (or ORT's FusedConv) node as a _Conv and its activation (a fused one, or the
    Relu/Sigmoid node that alone reads its output)."""
    attrs = _attrs(node)
    weight = consts[node.input[1]]
    bias = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    if (weight.ndim != 3 or attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1]))
            or attrs.get("auto_pad", b"NOTSET") != b"NOTSET"):
        raise _GraphMismatch(f"convolution {node.name}")
    activation = attrs.get("activation")
    if node.op_type == "FusedConv":
        if activation not in (b"Relu", b"Sigmoid"):
            raise _GraphMismatch(f"fused activation {activation!r}")
        act: str | None = activation.decode()
    else:
        readers = consumers.get(node.output[0], [])
        act = readers[0].op_type if len(readers) == 1 and readers[0].op_type in ("Relu", "Sigmoid") else None
    pads = attrs.get("pads", [0, 0])
    out, inp, kernel = weight.shape
    conv = _Conv(weight.transpose(2, 1, 0).reshape(kernel * inp, out).astype(np.float32),
                 None if bias is None else bias.astype(np.float32), kernel,
                 int(attrs.get("strides", [1])[0]), (int(pads[0]), int(pads[1])))
    return conv, act


class VadState:
    """One stream's VAD memory."""

    def __init__(self) -> None:
        self.lstm = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(_CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)


class EventKind(str, Enum):
    """What the endpointer saw."""

    START = "start"
    """Speech began (the window: the utterance's first)."""
    LIKELY_END = "likely_end"
    """A short silence (stop_history_eou_ms) after speech: the end looks likely."""
    END = "end"
    """The silence lasted stop_history_ms: the utterance ended."""
    PAUSE = "pause"
    """A pause long enough (pause_split_ms) to end a long utterance there."""
    PRESPLIT = "presplit"
    """A forced split of an over-long utterance comes in about a second."""
    SPLIT = "split"
    """An over-long utterance is split here."""


@dataclass(frozen=True)
class Event:
    """Something the endpointer saw."""

    kind: EventKind
    window: int
    """For start: first window of the utterance; for likely_end/end/pause: window after its last
    speech (the next utterance of a pause starts at `Endpointer.start`); for presplit and
    split: where the forced split is (presplit comes about a second before it)."""


class Endpointer:
    """Turns per-window speech probabilities into utterance start, likely end, end and split."""

    def __init__(self, params: EndpointParams) -> None:
        self.params = params
        self._start_n = max(1, params.start_history_ms // WINDOW_MS)
        self._stop_n = max(1, params.stop_history_ms // WINDOW_MS)
        self._eou_n = max(1, min(self._stop_n, params.stop_history_eou_ms // WINDOW_MS))
        self._max_n = max(self._stop_n * 2, params.max_utterance_ms // WINDOW_MS)
        self._pause_n = params.pause_split_ms // WINDOW_MS if params.pause_split_ms > 0 else None
        self._presplit_n = min(self._max_n // 8, 1000 // WINDOW_MS)
        self._history: deque[float] = deque(maxlen=max(self._start_n, self._stop_n))
        self.window = 0
        """Windows seen so far."""
        self.in_speech = False
        self.start = 0
        self.last_speech = 0
        """Window after the last speech window of the open utterance."""
        self._eou_sent = False
        self._split_at: int | None = None
        """Where the open utterance will be split if it reaches max_utterance_ms (once known)."""
        self._probs: list[float] = []
        """Probabilities of the open utterance's windows (for the quietest-point split)."""

    def ends_at_likely_end(self) -> bool:
        """Whether the open utterance ends at its likely end (eou) whether or not the speech
        goes on after it: it is at least `pause_split_ms` long."""
        return self._pause_n is not None and self.last_speech - self.start >= self._pause_n

    def end_now(self) -> Event | None:
        """End the open utterance here, as if its endpoint were reached (the client asked, as
        with Riva's force_eou): its 'end' event, or None outside an utterance. The next speech
        starts a new utterance."""
        if not self.in_speech:
            return None
        self.in_speech, self._eou_sent, self._split_at, self._probs = False, False, None, []
        return Event(EventKind.END, self.last_speech)

    def update(self, prob: float) -> list[Event]:
        """Feed one window's probability; returns what happened at it."""
        events: list[Event] = []
        self._history.append(prob)
        self.window += 1
        recent = list(self._history)
        if not self.in_speech:
            if len(recent) >= self._start_n and np.mean(recent[-self._start_n:]) >= self.params.start_threshold:
                self.in_speech, self._eou_sent, self._split_at = True, False, None
                self.start = self.window - self._start_n
                self._probs = recent[-self._start_n:]
                self.last_speech = self.window
                events.append(Event(EventKind.START, self.start))
            return events
        self._probs.append(prob)
        # After a likely end, speech goes on only on the evidence that starts an utterance: a
        # lone window over the threshold (a click, a breath) does not move the end.
        if prob >= self.params.speech_threshold and (
                not self._eou_sent or np.mean(recent[-self._start_n:]) >= self.params.start_threshold):
            if self._eou_sent and self.ends_at_likely_end():
                # Speech goes on after a likely end: end the long utterance there.
                events.append(Event(EventKind.PAUSE, self.last_speech))
                start = max(self.last_speech, self.window - self._start_n)
                self._probs = self._probs[start - self.start:]
                self.start, self._split_at = start, None
            self.last_speech, self._eou_sent = self.window, False
        # Only the utterance's own windows count towards its end.
        length = self.window - self.start
        if length >= self._stop_n and np.mean(recent[-self._stop_n:]) < self.params.stop_threshold:
            self.in_speech = False
            events.append(Event(EventKind.END, self.last_speech))
        elif (not self._eou_sent and self.last_speech < self.window and length >= self._eou_n
              and (np.mean(recent[-self._eou_n:]) < self.params.stop_threshold_eou
                   or self.window - self.last_speech >= self._eou_n)):
            self._eou_sent = True
            events.append(Event(EventKind.LIKELY_END, self.last_speech))
        elif (length >= self._max_n - self._presplit_n and self._split_at is None
              and not (self._eou_sent and self.ends_at_likely_end())):
            # Where a forced split will be, a little ahead, so that its final can start early
            # (not when the utterance ends at the likely end already found: no split comes).
            self._split_at = self.quietest(self.start + self._max_n // 2, self.window)
            events.append(Event(EventKind.PRESPLIT, self._split_at))
        elif length >= self._max_n:
            split = self._split_at if self._split_at is not None else self.window - 1
            events.append(Event(EventKind.SPLIT, split))
            self._probs = self._probs[split - self.start:]
            self.start, self._split_at = split, None
            self.last_speech = max(self.last_speech, split)
        return events

    def quietest(self, first: int, end: int) -> int:
        """Window index of the quietest point of the open utterance in windows [first, end)."""
        first = max(first, self.start)
        probs = np.asarray(self._probs[first - self.start:max(first + 1, end) - self.start])
        # Smooth over ~100 ms so a single dip inside a word does not win.
        smooth = np.convolve(probs, np.ones(3) / 3, mode="same")
        return first + int(np.argmin(smooth))
