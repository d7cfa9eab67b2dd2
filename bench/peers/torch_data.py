"""PIL + torchvision peer for bench/data-pipeline.mjs: the same images decoded, resized and
normalised into batches as ViTImageProcessor specifies (PIL resize with the processor's filter,
rescale, normalise), the way a PyTorch user writes it with torchvision.transforms.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout. Every reply
carries cpuSeconds: this process's CPU time (its DataLoader workers' included) per round.
  {"op": "setup", "images": [paths], "size": [h, w], "resample": 2, "mean": [...], "std": [...]}
  {"op": "preprocess", "rounds": 3}  -> {"seconds": [per batch], "cpuSeconds": [...]}  one image after another
  {"op": "decode", "rounds": 3}      -> the same for decoding to RGB alone
  {"op": "loader", "root": dir, "batch": 32, "workers": 2}
                                     -> {"seconds": [s], "cpuSeconds": [c], "images": n}  one pass of a
                                        DataLoader over an ImageFolder
"""
import json
import resource
import sys
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


def main():
    # One image's tensors are too small to gain from intra-op threads (DataLoader workers run
    # with one too); the benchmark gives visiontorch's decoding and preprocessing one as well.
    torch.set_num_threads(1)
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            reply = handle(op, request, state)
        except Exception as error:  # reported to the benchmark, which names the peer
            reply = {"error": f"{op}: {type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # DataLoader workers, once joined
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rgb(path):
    with Image.open(path) as image:
        return image.convert("RGB")


def timed(work, rounds):
    seconds, cpu = [], []
    for _ in range(rounds):
        cpu_start, start = cpu_seconds(), time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
        cpu.append(cpu_seconds() - cpu_start)
    return {"seconds": seconds, "cpuSeconds": cpu}


def handle(op, request, state):
    if op == "setup":
        filters = {2: transforms.InterpolationMode.BILINEAR, 3: transforms.InterpolationMode.BICUBIC}
        if request["resample"] not in filters:
            raise ValueError(f"resample {request['resample']}: only PIL's bilinear (2) and bicubic (3) are mapped")
        state["images"] = request["images"]
        state["transform"] = transforms.Compose([
            transforms.Resize(tuple(request["size"]), interpolation=filters[request["resample"]]),  # PIL's resize on PIL images
            transforms.ToTensor(),  # HWC uint8 -> CHW float, rescaled by 1/255
            transforms.Normalize(request["mean"], request["std"]),
        ])
        return {"ok": True}
    if op == "preprocess":
        return timed(lambda: torch.stack([state["transform"](rgb(path)) for path in state["images"]]), request["rounds"])
    if op == "decode":
        return timed(lambda: [rgb(path) for path in state["images"]], request["rounds"])
    if op == "loader":
        folder = datasets.ImageFolder(request["root"], transform=state["transform"])
        loader = DataLoader(folder, batch_size=request["batch"], shuffle=False, num_workers=request["workers"])
        counted = []
        reply = timed(lambda: counted.append(sum(pixels.shape[0] for pixels, _ in loader)), 1)
        return {**reply, "images": counted[0]}
    raise ValueError(f"unknown op {op}")


if __name__ == "__main__":
    main()
