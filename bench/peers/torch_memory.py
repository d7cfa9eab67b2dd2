"""PyTorch eager peer for bench/memory.mjs: the resident memory of one case, in a process of its
own so that its peak is its alone. The model is the ViT of the other benchmarks
(torch_vit.ViT, transformers' ViT in plain torch.nn) with random weights:
  infer  eval mode, torch.no_grad(), float32 forward passes (as torch_inference.py)
  train  optimizer steps in training mode: cross-entropy, backward, clipping at 1.0, AdamW,
         zero_grad(set_to_none=True) (as torch_vit.py's "train" op), optionally under
         torch.autocast("cpu", dtype=torch.bfloat16)

Usage: torch_memory.py <infer|train> <config.json> <batch> <threads> <steps> <fp32|bf16>
Prints one JSON line: resident MiB after `import torch`, after the model, optimizer and inputs
are made, after each step; the peak (VmHWM) after the load and at the end; and the status file's
RssAnon / RssFile split at the end.
"""
import json
import sys

import torch
from torch import nn

from torch_vit import ViT


def status():
    """The kernel's resident-memory counters of this process (/proc/self/status), in MiB."""
    values = {}
    with open("/proc/self/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values


def main():
    mode, config_path, batch, threads, steps, precision = sys.argv[1:7]
    batch, threads, steps = int(batch), int(threads), int(steps)
    torch.set_num_threads(threads)
    imported = status()["VmRSS"]
    torch.manual_seed(0)
    with open(config_path) as file:
        config = json.load(file)
    model = ViT(config)
    size, channels = config.get("image_size", 224), config.get("num_channels", 3)
    pixels = torch.randn(batch, channels, size, size)
    labels = torch.randint(0, model.classifier.out_features, (batch,))
    bf16 = precision == "bf16"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if mode == "train" else None
    loaded = status()
    after_steps = []
    for _ in range(steps):
        if mode == "train":
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = nn.functional.cross_entropy(model(pixels).float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
        else:
            model.eval()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(pixels)
        after_steps.append(status()["VmRSS"])
    end = status()
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "importRssMiB": imported,
                "loadRssMiB": loaded["VmRSS"],
                "loadPeakRssMiB": loaded["VmHWM"],
                "stepRssMiB": after_steps,
                "endRssMiB": end["VmRSS"],
                "peakRssMiB": end["VmHWM"],
                "anonRssMiB": end.get("RssAnon"),
                "fileRssMiB": end.get("RssFile"),
            }
        )
    )


if __name__ == "__main__":
    main()
