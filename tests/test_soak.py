"""`edged bench soak` against a real `edged start` (default models): it samples the server while
real-time ASR and TTS clients run beside abusive ones, and the abusive ones do not hurt the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_asr_server import BECKETT_TEXT, beckett_path
from tests.test_server import free_port, start_server, wait_serving


def test_soak_samples_the_server_and_abusers_cost_the_good_clients_nothing(default_repo: Path,
                                                                          tmp_path: Path) -> None:
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"audio": str(beckett_path()), "text": BECKETT_TEXT}) + "\n", encoding="utf-8")
    port = free_port()
    cfg = tmp_path / "config.sh"
    cfg.write_text(f'model_loc="{default_repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                   "metrics_port=0\nhttp_enabled=false\nwyoming_enabled=false\nasr_stream_idle_timeout_s=2\n"
                   "asr_max_streams=3\n", encoding="utf-8")
    proc = start_server(cfg, tmp_path / "server.log")
    try:
        wait_serving(proc, port, timeout=120)
        # Two idle ASR holders and one good stream fit asr_max_streams=3 only while the server
        # ends the idle ones; the junk FLAC stream takes a slot for a moment each time.
        out = subprocess.run(
            [sys.executable, "-m", "edged", "bench", "soak", "--manifest", str(manifest), "--minutes", "0.5",
             "--interval", "10", "--server", f"127.0.0.1:{port}", "--pid", str(proc.pid), "--asr-streams", "1",
             "--tts-streams", "1", "--abusers", "1", "--abuse", "idle-asr", "--abuse", "junk-audio", "--json"],
            capture_output=True, text=True, timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    samples = report["samples"]
    assert len(samples) == 3 and all(s["rss_mb"] > 100 and s["fds"] > 0 and s["threads"] > 0 for s in samples)
    assert sum(s["asr_finals"] for s in samples) > 0 and sum(s["tts_sentences"] for s in samples) > 0, samples
    assert sum(s["abuser_refusals"] for s in samples) > 0, samples
    assert report["failure_kinds"] == {} and sum(s["failures"] for s in samples) == 0, report
    log = (tmp_path / "server.log").read_text()
    assert "Ending an idle asr stream" in log and "Traceback" not in log, log[-3000:]
