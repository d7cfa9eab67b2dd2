"""PyTorch eager peer for bench/load.mjs: one cold start, from a model.safetensors file to the
first prediction of one image, the way transformers' from_pretrained + pipeline would do it on a
machine without transformers or the safetensors package (Debian's python3-torch only):
  - the safetensors file is memory-mapped and its tensors viewed with torch.frombuffer (what the
    safetensors package does, zero copy);
  - the model (torch_vit.ViT, transformers' ViT in plain torch.nn) is constructed, which runs
    torch.nn's default initialisation as transformers 4.31 does without low_cpu_mem_usage, and
    the weights are copied in with load_state_dict;
  - the image is read with PIL, resized (bilinear) and normalised as ViTImageProcessor does, and
    the model runs under no_grad.

Usage: torch_load.py <checkpoint dir> <image> <threads>
Prints one JSON line: {startupSeconds, loadSeconds, firstPredictSeconds, totalSeconds, secondPredictSeconds, cpuSeconds, rssMiB, peakRssMiB, top1}.
"""
import json
import mmap
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
from PIL import Image

from torch_vit import ViT

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


def seconds_since_process_start():
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/self/stat") as stat:
        start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) - start_ticks / ticks


def read_safetensors(path):
    with open(path, "rb") as file:
        # ACCESS_COPY: writable private pages, as torch.frombuffer wants a writable buffer.
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    (header_length,) = struct.unpack("<Q", mapped[:8])
    header = json.loads(mapped[8 : 8 + header_length])
    base = 8 + header_length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        count = (end - begin) // torch.empty((), dtype=dtype).element_size()
        tensors[name] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=base + begin).view(info["shape"])
    return tensors


# transformers' ViTForImageClassification key names -> torch_vit.ViT's.
RENAMES = [
    ("vit.embeddings.patch_embeddings.projection.", "projection."),
    ("vit.embeddings.", ""),
    ("vit.encoder.layer.", "layers."),
    (".attention.attention.", "."),
    (".attention.output.dense.", ".out."),
    (".intermediate.dense.", ".fc1."),
    (".output.dense.", ".fc2."),
    (".layernorm_before.", ".ln1."),
    (".layernorm_after.", ".ln2."),
    ("vit.layernorm.", "layernorm."),
]


def peer_key(name):
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


def preprocess(path, processor):
    size = processor["size"]
    image = Image.open(path).convert("RGB").resize((size["width"], size["height"]), Image.Resampling(processor["resample"]))
    pixels = np.asarray(image, dtype=np.float32) * np.float32(processor["rescale_factor"])
    pixels = (pixels - np.array(processor["image_mean"], np.float32)) / np.array(processor["image_std"], np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).unsqueeze(0)


def main():
    checkpoint, image, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(threads)
    startup = seconds_since_process_start()

    start = time.perf_counter()
    with open(os.path.join(checkpoint, "config.json")) as file:
        config = json.load(file)
    with open(os.path.join(checkpoint, "preprocessor_config.json")) as file:
        processor = json.load(file)
    weights = read_safetensors(os.path.join(checkpoint, "model.safetensors"))
    model = ViT(config)
    model.load_state_dict({peer_key(name): tensor for name, tensor in weights.items()})
    model.eval()
    loaded = time.perf_counter()

    with torch.no_grad():
        probabilities = model(preprocess(image, processor)).softmax(-1)
    top1 = int(probabilities[0].topk(1).indices[0])
    predicted = time.perf_counter()
    # Outside the measured span: a second prediction shows what the first one paid once.
    with torch.no_grad():
        model(preprocess(image, processor)).softmax(-1)
    second_predict = time.perf_counter() - predicted

    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    print(json.dumps({
        "threads": threads,
        "startupSeconds": startup,
        "loadSeconds": loaded - start,
        "firstPredictSeconds": predicted - loaded,
        "totalSeconds": predicted - start,
        "secondPredictSeconds": second_predict,
        "cpuSeconds": usage.ru_utime + usage.ru_stime,
        "rssMiB": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20,
        "peakRssMiB": usage.ru_maxrss / 1024,
        "top1": top1,
    }))


if __name__ == "__main__":
    main()
