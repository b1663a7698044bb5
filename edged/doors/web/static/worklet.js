// Hands the microphone's samples (float32, the context's rate) to the page in ~50 ms blocks.
class Capture extends AudioWorkletProcessor {
  constructor() { super(); this.parts = []; this.count = 0; }
  process(inputs) {
    const input = inputs[0];
    if (input && input[0]) {
      this.parts.push(input[0].slice());
      this.count += input[0].length;
      if (this.count >= sampleRate / 20) {
        const out = new Float32Array(this.count);
        let at = 0;
        for (const p of this.parts) { out.set(p, at); at += p.length; }
        this.port.postMessage(out, [out.buffer]);
        this.parts = []; this.count = 0;
      }
    }
    return true;
  }
}
registerProcessor("capture", Capture);
