"""Exports the inference benchmark's architectures (bench/inference-models.json) to ONNX for
onnxruntime-node: fp32, random weights (seed 0), opset 14, input `pixel_values` with a dynamic
batch axis.

  python3 bench/peers/export_onnx.py <output dir> [model ...]      (default: every model)

A model is exported again only when its .onnx file is missing or older than the model code, the
model table or its config.json, so running this repeatedly is cheap. Files are written under a
temporary name and renamed, so an interrupted export never leaves a file that looks finished.
"""
import json
import os
import sys
import time
from pathlib import Path

import torch

from vision_models import build_model, output_names

PEERS = Path(__file__).resolve().parent
BENCH = PEERS.parent
OPSET = 14


def is_current(target, sources):
    return target.exists() and all(target.stat().st_mtime >= source.stat().st_mtime for source in sources)


def export(name, entry, target):
    config = (BENCH / entry["config"] / "config.json").resolve()
    torch.manual_seed(0)
    # Several table entries may share one architecture (a tiny and a full-size ViT).
    architecture = entry.get("architecture", name)
    model = build_model(architecture, config)
    size = entry["imageSize"]
    # Batch 2 so that nothing in the trace specialises on a batch of one.
    example = torch.randn(2, 3, size, size)
    outputs = output_names(architecture)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(temporary),
                opset_version=OPSET,
                input_names=["pixel_values"],
                output_names=outputs,
                dynamic_axes={"pixel_values": {0: "batch"}, **{output: {0: "batch"} for output in outputs}},
                do_constant_folding=True,
            )
        temporary.rename(target)
    finally:
        temporary.unlink(missing_ok=True)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: export_onnx.py <output dir> [model ...]")
    out_dir = Path(sys.argv[1])
    table_path = BENCH / "inference-models.json"
    table = json.loads(table_path.read_text())
    names = sys.argv[2:] or list(table)
    unknown = [name for name in names if name not in table]
    if unknown:
        sys.exit(f"export_onnx.py: unknown model(s) {', '.join(unknown)}; {table_path} has {', '.join(table)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # What an export depends on besides its config.json: the model code and the model table.
    sources = [table_path, PEERS / "export_onnx.py", PEERS / "vision_models.py", PEERS / "torch_vit.py"]
    for name in names:
        target = out_dir / f"{name}.onnx"
        config = BENCH / table[name]["config"] / "config.json"
        if not config.exists():
            sys.exit(f"export_onnx.py: {name}: no config at {config}")
        if is_current(target, [*sources, config]):
            print(f"export_onnx.py: {target.name} is up to date", flush=True)
            continue
        start = time.perf_counter()
        export(name, table[name], target)
        megabytes = target.stat().st_size / 2**20
        print(f"export_onnx.py: exported {target.name} ({megabytes:.0f} MiB) in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
