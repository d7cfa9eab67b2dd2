"""PyTorch eager peer of the inference benchmark (bench/inference.mjs): no_grad forward passes of
the plain-torch models in vision_models.py, in fp32, with bf16 weights and input, or in fp32
with dynamic int8 linear layers.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.
  {"op": "setup", "model": "vit", "config": "<dir>/config.json", "imageSize": 224, "batch": 8,
   "dtype": "float32" | "bfloat16" | "int8", "threads": 2, "channelsLast": false}
      -> {"ok": true, "parameters": N, "torch": "<version>"}
  {"op": "infer", "steps": 3}  -> {"seconds": [per-forward seconds...]}

A setup with the same model, config, dtype and layout as the previous one keeps the module and
only makes a new input, so moving between batch sizes costs no rebuild.
"""
import json
import sys
import time

import torch

from vision_models import build_model


def setup(request, state):
    torch.set_num_threads(int(request.get("threads", 2)))
    # int8: float32 with dynamic int8 linear layers (quantize_dynamic on the oneDNN engine).
    quantized = request.get("dtype") == "int8"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}.get(request.get("dtype", "float32"))
    if dtype is None:
        raise ValueError(f"dtype must be float32, bfloat16 or int8, got {request.get('dtype')!r}")
    # Convolutional models run channels-last (NHWC), PyTorch's advice for CPU inference.
    layout = torch.channels_last if request.get("channelsLast") else torch.contiguous_format
    key = (request["model"], request["config"], dtype, layout, quantized)
    if state.get("key") != key:
        state.clear()
        torch.manual_seed(0)
        state["model"] = build_model(request["model"], request["config"]).to(dtype=dtype, memory_format=layout)
        if quantized:
            torch.backends.quantized.engine = "onednn"
            state["model"] = torch.ao.quantization.quantize_dynamic(state["model"], {torch.nn.Linear}, dtype=torch.qint8)
        state["key"] = key
    size, batch = int(request["imageSize"]), int(request["batch"])
    state["pixels"] = torch.randn(batch, 3, size, size).to(dtype=dtype, memory_format=layout)
    return {"ok": True, "parameters": sum(p.numel() for p in state["model"].parameters()), "torch": torch.__version__}


def infer(request, state):
    if "model" not in state:
        raise ValueError("infer before setup")
    model, pixels, seconds = state["model"], state["pixels"], []
    with torch.no_grad():
        for _ in range(int(request.get("steps", 1))):
            start = time.perf_counter()
            model(pixels)
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds}


def main():
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request.get("op") == "setup":
                reply = setup(request, state)
            elif request.get("op") == "infer":
                reply = infer(request, state)
            else:
                reply = {"error": f"unknown op {request.get('op')!r}"}
        except Exception as error:  # reported to the benchmark, which names the case
            reply = {"error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
