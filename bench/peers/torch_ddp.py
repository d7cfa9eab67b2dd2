"""PyTorch DDP peer for bench/distributed.mjs: the ViT of torch_vit.py (transformers' ViT in plain
torch.nn) trained by DistributedDataParallel on `world` processes (torch.multiprocessing, gloo,
env:// on 127.0.0.1), each with `batch` images per step and `threads` intra-op threads, AdamW and
clipping as the Trainer does, in float32 or under bf16 autocast. Images are Fashion-MNIST's,
normalised in memory (28x28, one channel), or random ones of the config's size for other ViTs.

  python3 torch_ddp.py '{"config": ".../config.json", "world": 2, "batch": 64, "threads": 1,
                         "steps": 20, "warmup": 3, "port": 29512, "fashion": "<dir>" | null,
                         "precision": "fp32" | "bf16"}'

Prints one JSON line: images per second over the timed steps, and DDP's own averages of a
step's backward computation, all-reduce time and their overlap (its logging data), in seconds.
"""
import gzip
import json
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_vit import ViT  # noqa: E402


def fashion_images(directory, count):
    with gzip.open(os.path.join(directory, "train-images-idx3-ubyte.gz")) as f:
        data = f.read()
    images = torch.frombuffer(bytearray(data[16 : 16 + count * 784]), dtype=torch.uint8).view(count, 1, 28, 28)
    with gzip.open(os.path.join(directory, "train-labels-idx1-ubyte.gz")) as f:
        labels = torch.frombuffer(bytearray(f.read()[8 : 8 + count]), dtype=torch.uint8).long()
    # ViTImageProcessor's rescale and normalise (mean 0.5, std 0.5).
    return (images.float() / 255.0 - 0.5) / 0.5, labels


def worker(rank, settings, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(settings["port"])
    torch.set_num_threads(settings["threads"])
    dist.init_process_group("gloo", rank=rank, world_size=settings["world"])
    config = json.load(open(settings["config"]))
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(ViT(config))
    # Time every step, as visiontorch's reducer does (DDP samples one in 100 after the first 10).
    model._set_ddp_runtime_logging_sample_rate(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, world = settings["batch"], settings["world"]
    steps = settings["warmup"] + settings["steps"]
    if settings.get("fashion"):
        images, labels = fashion_images(settings["fashion"], batch * world * steps)
    else:
        size, channels = config["image_size"], config.get("num_channels", 3)
        images = torch.randn(batch * world * steps, channels, size, size)
        labels = torch.randint(0, model.module.classifier.out_features, (batch * world * steps,))
    # DistributedSampler's rule: rank r takes every world-th sample.
    mine = torch.arange(rank, images.shape[0], world)
    start = None
    for step in range(steps):
        if step == settings["warmup"]:
            dist.barrier()
            start = time.perf_counter()
        index = mine[step * batch : (step + 1) * batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.get("precision") == "bf16"):
            logits = model(images[index])
        loss = nn.functional.cross_entropy(logits.float(), labels[index])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        stats = model._get_ddp_logging_data()
        ns = lambda key: stats.get(key, 0) / 1e9  # noqa: E731
        results.put(
            {
                "imagesPerSecond": batch * world * settings["steps"] / seconds,
                "secondsPerStep": seconds / settings["steps"],
                "backwardSeconds": ns("avg_backward_compute_time"),
                "allreduceSeconds": ns("avg_backward_comm_time"),
                "overlapSeconds": ns("avg_backward_compute_comm_overlap_time"),
            }
        )
    dist.destroy_process_group()


def main():
    settings = json.loads(sys.argv[1])
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=worker, args=(rank, settings, results)) for rank in range(settings["world"])]
    for p in processes:
        p.start()
    result = results.get()
    for p in processes:
        p.join()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
