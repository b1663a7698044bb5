"""`edged devices`: what this machine offers edged (CPU, Jetson, GPU, TensorRT, ONNX Runtime)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edged.cli.app import ConfigOpt, app, load_config


def _line(section: dict[str, Any] | None, keys: list[tuple[str, str]]) -> str:
    if not section:
        return "-"
    if "error" in section:
        return f"not usable: {section['error']}"
    parts = []
    for key, label in keys:
        value = section.get(key)
        if value in (None, "", []):
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        parts.append(f"{label}{value}")
    return ", ".join(parts)


@app.command()
def devices(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the CPU, Jetson model and JetPack, GPU, TensorRT, ONNX Runtime, and the backend chosen."""
    from edged.backends.probe import probe
    from edged.backends.report import device_report

    settings = load_config(config)
    report = device_report(probe(), settings.backend)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    gpu = report["gpu"]
    rows = [
        ("CPU", _line(report["host"], [("cpu", ""), ("arch", "arch "), ("cpu_isa", "ISA ")])),
        ("Jetson", _line(report["jetson"], [("model", ""), ("l4t", "L4T "), ("jetpack", "JetPack ")])),
        ("GPU", _line(gpu, [("name", ""), ("compute_capability", "compute capability "),
                            ("free_mb", "free MB "), ("total_mb", "total MB "),
                            ("driver_version", "driver CUDA ")])
         + (" (shares system memory)" if gpu.get("integrated") else "")),
        ("cuda-python", report["cuda_python"] or "not installed (pip install 'edged[gpu]')"),
        ("TensorRT", _line(report["tensorrt"], [("module", ""), ("version", ""), ("note", "")])),
        ("ONNX Runtime", _line(report["onnxruntime"], [("version", ""), ("providers", "providers ")])),
    ]
    backend = report["backend"]
    rows.append(("backend", f"backend={backend['requested']}: " + (
        f"{backend['chosen']} ({backend['reason']})" if "chosen" in backend else backend["error"])))
    width = max(len(label) for label, _ in rows)
    for label, text in rows:
        typer.echo(f"{label.ljust(width)}  {text}")
