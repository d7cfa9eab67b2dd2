"""PyTorch eager peer for the benchmarks: HuggingFace's ViT (ViTForImageClassification) written
out in plain torch.nn, with the same module structure and arithmetic as transformers'
modeling_vit.py, because the machine that runs the benchmarks has Debian's python3-torch but not
transformers. A ResNet config (model_type "resnet") trains torchvision's ResNet-50 instead, in
channels-last as PyTorch's CPU guides advise.

Protocol: one JSON request per line on stdin, one JSON reply per line on stdout.
  {"op": "setup", "config": "<dir>/config.json", "batch": 8, "precision": "fp32" | "bf16", "threads": 2,
   "image_size": 224}
  {"op": "train", "steps": 5}   -> {"seconds": [per-step seconds...]}   (AdamW step, as the Trainer)
  {"op": "train", "steps": 5, "profile": true}
                                -> also {"profile": {"wallSeconds", "ops": [{phase, name, calls, selfSeconds,
                                   totalSeconds}]}}: torch.profiler's operators, each step's phases
                                   (forward, backward, clip, optimizer) as record_function scopes
  {"op": "infer", "steps": 5}   -> {"seconds": [...]}                   (no_grad forward)
"""
import json
import math
import sys
import time

import torch
from torch import nn
from torch.autograd.profiler import record_function


ACT = {"gelu": nn.GELU(), "relu": nn.ReLU(), "silu": nn.SiLU(), "gelu_new": nn.GELU(approximate="tanh")}


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.query = nn.Linear(h, h, bias=c.get("qkv_bias", True))
        self.key = nn.Linear(h, h, bias=c.get("qkv_bias", True))
        self.value = nn.Linear(h, h, bias=c.get("qkv_bias", True))
        self.out = nn.Linear(h, h)
        self.fc1 = nn.Linear(h, c["intermediate_size"])
        self.fc2 = nn.Linear(c["intermediate_size"], h)
        self.act = ACT[c.get("hidden_act", "gelu")]
        eps = c.get("layer_norm_eps", 1e-12)
        self.ln1 = nn.LayerNorm(h, eps=eps)
        self.ln2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x):
        b, t, h = x.shape
        d = h // self.heads
        y = self.ln1(x)
        q, k, v = (m(y).view(b, t, self.heads, d).transpose(1, 2) for m in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        ctx = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, h)
        x = self.out(ctx) + x
        return self.fc2(self.act(self.fc1(self.ln2(x)))) + x


class ViT(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, p = c["hidden_size"], c["patch_size"]
        size = c["image_size"]
        self.size = size
        self.channels = c.get("num_channels", 3)
        self.projection = nn.Conv2d(self.channels, h, p, stride=p)
        patches = (size // p) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, h) * 0.02)
        self.position_embeddings = nn.Parameter(torch.randn(1, patches + 1, h) * 0.02)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.layernorm = nn.LayerNorm(h, eps=c.get("layer_norm_eps", 1e-12))
        self.classifier = nn.Linear(h, len(c.get("id2label", {"0": 0, "1": 1})))

    def forward(self, pixel_values):
        x = self.projection(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.position_embeddings
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.layernorm(x)[:, 0])


PHASES = ("forward", "backward", "clip", "optimizer")


def operator_profile(profiler, wall_seconds):
    """Self and total time per (phase, operator), as visiontorch's stopProfiler() reports them."""
    totals = {}
    for event in profiler.events():
        root = event
        while root.cpu_parent is not None:
            root = root.cpu_parent
        phase = root.name if root.name in PHASES else ""
        entry = totals.setdefault((phase, event.name), {"phase": phase, "name": event.name, "calls": 0, "selfSeconds": 0.0, "totalSeconds": 0.0})
        entry["calls"] += 1
        entry["selfSeconds"] += event.self_cpu_time_total / 1e6
        entry["totalSeconds"] += event.cpu_time_total / 1e6
    ops = sorted(totals.values(), key=lambda entry: -entry["selfSeconds"])
    return {"wallSeconds": wall_seconds, "ops": ops}


def main():
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "setup":
            torch.set_num_threads(request.get("threads", 2))
            torch.manual_seed(0)
            config = json.load(open(request["config"]))
            batch, size = request["batch"], request.get("image_size", config.get("image_size", 224))
            channels = config.get("num_channels", 3)
            pixels = torch.randn(batch, channels, size, size)
            if config.get("model_type") == "resnet":
                from vision_models import build_model  # imports this module: load it only here

                model = build_model("resnet50", request["config"]).to(memory_format=torch.channels_last)
                pixels = pixels.contiguous(memory_format=torch.channels_last)
                classes = model.fc.out_features
            else:
                model = ViT(config)
                classes = model.classifier.out_features
            state = {
                "model": model,
                "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-4),
                "pixels": pixels,
                "labels": torch.randint(0, classes, (batch,)),
                "bf16": request.get("precision") == "bf16",
            }
            reply = {"ok": True, "parameters": sum(p.numel() for p in model.parameters())}
        elif op in ("train", "infer"):
            model, seconds = state["model"], []
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if request.get("profile") else None
            profile_start = time.perf_counter()
            if profiler:
                profiler.__enter__()
            for _ in range(request["steps"]):
                start = time.perf_counter()
                if op == "train":
                    model.train()
                    with record_function("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=state["bf16"]):
                        loss = nn.functional.cross_entropy(model(state["pixels"]).float(), state["labels"])
                    with record_function("backward"):
                        loss.backward()
                    with record_function("clip"):
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    with record_function("optimizer"):
                        state["optimizer"].step()
                        state["optimizer"].zero_grad(set_to_none=True)
                else:
                    model.eval()
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=state["bf16"]):
                        model(state["pixels"])
                seconds.append(time.perf_counter() - start)
            reply = {"seconds": seconds}
            if profiler:
                wall_seconds = time.perf_counter() - profile_start
                profiler.__exit__(None, None, None)
                reply["profile"] = operator_profile(profiler, wall_seconds)
        else:
            reply = {"error": f"unknown op {op}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
