"""The architectures of the inference benchmark in plain torch (and torchvision), built from the
same config.json files visiontorch loads, so that PyTorch eager and the ONNX exports for
onnxruntime run the same shapes and operations as transformers' models. transformers is not
installed on the benchmark machine, hence these re-implementations; weights are random.

  vit        ViTForImageClassification          (torch_vit.ViT, the training benchmark's peer)
  resnet50   ResNetForImageClassification       (torchvision's resnet50: the same layers and shapes,
                                                 stride in the 3x3 convolution as transformers')
  segformer  SegformerForSemanticSegmentation   (following transformers' modeling_segformer.py)
  detr       DetrForObjectDetection             (torchvision's resnet50 trunk as the timm backbone,
                                                 following transformers' modeling_detr.py)
  swin       SwinForImageClassification         (following transformers' modeling_swin.py, with its
                                                 state_dict keys; the shifted-window masks are
                                                 buffers made once for config.json's image_size)
"""
import json
import math

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from torch_vit import ACT, ViT


def num_labels(config):
    return len(config.get("id2label", {"0": 0, "1": 1}))


# ---------------------------------------------------------------------------------------------
# SegFormer (MiT encoder and the all-MLP decode head)


class SegformerSelfAttention(nn.Module):
    """Multi-head attention whose keys and values come from a sequence shortened by a strided
    convolution (sequence reduction ratio r: r x r patches become one token)."""

    def __init__(self, hidden, heads, reduction):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.reduction = reduction
        if reduction > 1:
            self.sr = nn.Conv2d(hidden, hidden, kernel_size=reduction, stride=reduction)
            self.layer_norm = nn.LayerNorm(hidden)
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x, height, width):
        b, t, c = x.shape
        d = c // self.heads
        q = self.query(x).view(b, t, self.heads, d).transpose(1, 2)
        if self.reduction > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, height, width))
            x = self.layer_norm(x.reshape(b, c, -1).transpose(1, 2))
        k = self.key(x).view(b, -1, self.heads, d).transpose(1, 2)
        v = self.value(x).view(b, -1, self.heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, c)
        return self.dense(context)


class SegformerMixFFN(nn.Module):
    """Linear, 3x3 depthwise convolution over the token grid, activation, linear."""

    def __init__(self, hidden, inner, act):
        super().__init__()
        self.dense1 = nn.Linear(hidden, inner)
        self.dwconv = nn.Conv2d(inner, inner, 3, 1, 1, groups=inner)
        self.act = act
        self.dense2 = nn.Linear(inner, hidden)

    def forward(self, x, height, width):
        x = self.dense1(x)
        b, t, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width)).flatten(2).transpose(1, 2)
        return self.dense2(self.act(x))


class SegformerLayer(nn.Module):
    def __init__(self, hidden, heads, reduction, mlp_ratio, act):
        super().__init__()
        # transformers builds these LayerNorms with torch's default eps, whatever layer_norm_eps says.
        self.layer_norm_1 = nn.LayerNorm(hidden)
        self.attention = SegformerSelfAttention(hidden, heads, reduction)
        self.layer_norm_2 = nn.LayerNorm(hidden)
        self.mlp = SegformerMixFFN(hidden, int(hidden * mlp_ratio), act)

    def forward(self, x, height, width):
        x = self.attention(self.layer_norm_1(x), height, width) + x
        return self.mlp(self.layer_norm_2(x), height, width) + x


class SegformerStage(nn.Module):
    """Overlapping patch embedding (a strided convolution and LayerNorm), the layers, a LayerNorm."""

    def __init__(self, c, i, in_channels):
        super().__init__()
        hidden, patch = c["hidden_sizes"][i], c["patch_sizes"][i]
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=c["strides"][i], padding=patch // 2)
        self.embedding_norm = nn.LayerNorm(hidden)
        act = ACT[c.get("hidden_act", "gelu")]
        self.layers = nn.ModuleList(
            SegformerLayer(hidden, c["num_attention_heads"][i], c["sr_ratios"][i], c["mlp_ratios"][i], act)
            for _ in range(c["depths"][i])
        )
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x):
        x = self.proj(x)
        b, c, height, width = x.shape
        x = self.embedding_norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            x = layer(x, height, width)
        return self.norm(x).reshape(b, height, width, c).permute(0, 3, 1, 2).contiguous()


class Segformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        hidden_sizes = c["hidden_sizes"]
        stages = c.get("num_encoder_blocks", len(hidden_sizes))
        channels = [c.get("num_channels", 3)] + hidden_sizes
        self.stages = nn.ModuleList(SegformerStage(c, i, channels[i]) for i in range(stages))
        decoder = c.get("decoder_hidden_size", 256)
        self.linear_c = nn.ModuleList(nn.Linear(h, decoder) for h in hidden_sizes)
        self.linear_fuse = nn.Conv2d(decoder * stages, decoder, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(decoder)
        self.classifier = nn.Conv2d(decoder, num_labels(c), kernel_size=1)

    def forward(self, pixel_values):
        features = []
        x = pixel_values
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        # Every stage to the decoder width, upsampled to the first stage's grid (1/4 of the input).
        size = features[0].shape[2:]
        unified = []
        for feature, mlp in zip(features, self.linear_c):
            b, _, height, width = feature.shape
            y = mlp(feature.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, height, width)
            unified.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        x = F.relu(self.batch_norm(self.linear_fuse(torch.cat(unified[::-1], dim=1))))
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------
# DETR (ResNet-50 backbone, post-LayerNorm encoder-decoder transformer, class and box heads)


class DetrAttention(nn.Module):
    """Multi-head attention; callers add position embeddings to queries and keys, not values."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.heads = heads
        self.scaling = (d_model // heads) ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, query, key, value, additive_mask=None):
        b, tq, c = query.shape
        d = c // self.heads
        q = (self.q_proj(query) * self.scaling).view(b, tq, self.heads, d).transpose(1, 2)
        k = self.k_proj(key).view(b, -1, self.heads, d).transpose(1, 2)
        v = self.v_proj(value).view(b, -1, self.heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if additive_mask is not None:
            scores = scores + additive_mask
        return self.out_proj(torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, tq, c))


class DetrEncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.self_attn = DetrAttention(d, c["encoder_attention_heads"])
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, c["encoder_ffn_dim"])
        self.fc2 = nn.Linear(c["encoder_ffn_dim"], d)
        self.act = ACT[c.get("activation_function", "relu")]
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, position, additive_mask):
        query_key = x + position
        x = self.self_attn_layer_norm(x + self.self_attn(query_key, query_key, x, additive_mask))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class DetrDecoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.self_attn = DetrAttention(d, c["decoder_attention_heads"])
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = DetrAttention(d, c["decoder_attention_heads"])
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, c["decoder_ffn_dim"])
        self.fc2 = nn.Linear(c["decoder_ffn_dim"], d)
        self.act = ACT[c.get("activation_function", "relu")]
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, query_position, memory, memory_position, memory_mask):
        query_key = x + query_position
        x = self.self_attn_layer_norm(x + self.self_attn(query_key, query_key, x))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn(x + query_position, memory + memory_position, memory, memory_mask))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


def sine_position_embedding(mask, features, temperature=10000.0, scale=2 * math.pi):
    """DETR's normalised sine embedding of a [batch, height, width] pixel mask: [batch, 2 * features, height, width]."""
    y = mask.cumsum(1, dtype=torch.float32)
    x = mask.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * scale
    x = x / (x[:, :, -1:] + 1e-6) * scale
    dim_t = torch.arange(features, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features)
    pos_x = x[:, :, :, None] / dim_t
    pos_y = y[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class Detr(nn.Module):
    def __init__(self, c):
        super().__init__()
        if c.get("position_embedding_type", "sine") != "sine":
            raise ValueError(f"the DETR peer implements sine position embeddings only, not {c['position_embedding_type']}")
        if c.get("backbone", "resnet50") != "resnet50" and c.get("use_timm_backbone", True):
            raise ValueError(f"the DETR peer implements the resnet50 backbone only, not {c['backbone']}")
        d = c["d_model"]
        trunk = torchvision.models.resnet50()
        # The stem and four stages; stage 4 (2048 channels, stride 32) feeds the transformer.
        self.backbone = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        self.input_projection = nn.Conv2d(2048, d, kernel_size=1)
        self.query_position_embeddings = nn.Embedding(c["num_queries"], d)
        self.encoder = nn.ModuleList(DetrEncoderLayer(c) for _ in range(c["encoder_layers"]))
        self.decoder = nn.ModuleList(DetrDecoderLayer(c) for _ in range(c["decoder_layers"]))
        self.decoder_layernorm = nn.LayerNorm(d)
        self.class_labels_classifier = nn.Linear(d, num_labels(c) + 1)  # + "no object"
        self.bbox_predictor = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 4))

    def forward(self, pixel_values):
        features = self.backbone(pixel_values)
        b = features.shape[0]
        # An unpadded batch: the pixel mask is all ones, downsampled to the feature map as transformers does.
        pixel_mask = torch.ones_like(pixel_values[:, 0], dtype=torch.float32)
        mask = F.interpolate(pixel_mask[None], size=features.shape[-2:])[0]
        position = sine_position_embedding(mask, self.input_projection.out_channels // 2).to(features.dtype)
        position = position.flatten(2).transpose(1, 2)
        memory = self.input_projection(features).flatten(2).transpose(1, 2)
        flat_mask = mask.flatten(1).to(memory.dtype)
        additive_mask = ((1 - flat_mask) * torch.finfo(memory.dtype).min)[:, None, None, :]
        for layer in self.encoder:
            memory = layer(memory, position, additive_mask)
        query_position = self.query_position_embeddings.weight.unsqueeze(0).expand(b, -1, -1)
        x = torch.zeros_like(query_position)
        for layer in self.decoder:
            x = layer(x, query_position, memory, position, additive_mask)
        x = self.decoder_layernorm(x)
        return self.class_labels_classifier(x), self.bbox_predictor(x).sigmoid()


# ---------------------------------------------------------------------------------------------
# Swin (patch embedding, shifted-window attention with relative position bias, patch merging)


def window_partition(x, window):
    """[B, H, W, C] -> [B * H/w * W/w, w * w, C], the windows of each image in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows, window, height, width):
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def relative_position_index(window):
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def shifted_window_mask(height, width, window, shift):
    """[windows, w*w, w*w]: -100 between tokens the cyclic shift brought together from different
    regions of the (padded) map, 0 elsewhere, as SwinLayer.get_attn_mask."""
    regions = torch.zeros(1, height, width, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    count = 0
    for rows in bands:
        for cols in bands:
            regions[:, rows, cols, :] = count
            count += 1
    windows = window_partition(regions, window).squeeze(-1)
    difference = windows.unsqueeze(1) - windows.unsqueeze(2)
    return difference.masked_fill(difference != 0, -100.0).masked_fill(difference == 0, 0.0)


class SwinSelfAttention(nn.Module):
    def __init__(self, dim, heads, window, qkv_bias):
        super().__init__()
        self.heads = heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.query = nn.Linear(dim, dim, bias=qkv_bias)
        self.key = nn.Linear(dim, dim, bias=qkv_bias)
        self.value = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x, mask=None):
        b, t, c = x.shape
        d = c // self.heads
        q = self.query(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.key(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.value(x).view(b, t, self.heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(t, t, -1)
        scores = scores + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            # [B * windows, heads, T, T] + [windows, 1, T, T], by image (-1 keeps the batch dynamic)
            windows = mask.shape[0]
            scores = (scores.view(-1, windows, self.heads, t, t) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, t, t)
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, c)
        return context


class SwinSelfOutput(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dense = nn.Linear(dim, dim)


class SwinAttention(nn.Module):
    def __init__(self, dim, heads, window, qkv_bias):
        super().__init__()
        self.self = SwinSelfAttention(dim, heads, window, qkv_bias)
        self.output = SwinSelfOutput(dim)

    def forward(self, x, mask=None):
        return self.output.dense(self.self(x, mask))


class SwinDense(nn.Module):
    """`intermediate` and `output` of a SwinLayer: one `dense` each (the keys' names)."""

    def __init__(self, inputs, outputs):
        super().__init__()
        self.dense = nn.Linear(inputs, outputs)


class SwinLayer(nn.Module):
    def __init__(self, c, dim, heads, shift, resolution):
        super().__init__()
        self.config_window = c["window_size"]
        self.config_shift = shift
        eps = c.get("layer_norm_eps", 1e-5)
        self.layernorm_before = nn.LayerNorm(dim, eps=eps)
        self.attention = SwinAttention(dim, heads, c["window_size"], c.get("qkv_bias", True))
        self.layernorm_after = nn.LayerNorm(dim, eps=eps)
        self.intermediate = SwinDense(dim, int(c.get("mlp_ratio", 4.0) * dim))
        self.output = SwinDense(int(c.get("mlp_ratio", 4.0) * dim), dim)
        self.act = ACT[c.get("hidden_act", "gelu")]
        # The shifted-window mask for config.json's image size, made once (transformers makes it on
        # each forward pass, and so does the peer for other sizes).
        self.mask_size = self.padded(*resolution)
        self.register_buffer("attn_mask", self.mask_for(*self.mask_size), persistent=False)

    def window_and_shift(self, height, width):
        # SwinLayer.set_shift_and_window_size: a map no larger than the window is one unshifted window.
        if min(height, width) <= self.config_window:
            return min(height, width), 0
        return self.config_window, self.config_shift

    def padded(self, height, width):
        window, _ = self.window_and_shift(height, width)
        return height + (window - height % window) % window, width + (window - width % window) % window

    def mask_for(self, height, width):
        window, shift = self.window_and_shift(height, width)
        return shifted_window_mask(height, width, window, shift) if shift > 0 else None

    def forward(self, x, height, width):
        b, _, c = x.shape
        window, shift = self.window_and_shift(height, width)
        if window != self.config_window:
            raise ValueError(f"the Swin peer does not implement windows shrunk below window_size (a {height}x{width} map)")
        shortcut = x
        x = self.layernorm_before(x).view(b, height, width, c)
        padded_height, padded_width = self.padded(height, width)
        if padded_height != height or padded_width != width:
            x = F.pad(x, (0, 0, 0, padded_width - width, 0, padded_height - height))
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = None
        if shift > 0:
            mask = self.attn_mask if (padded_height, padded_width) == self.mask_size else self.mask_for(padded_height, padded_width).to(x)
        x = self.attention(window_partition(x, window), mask)
        x = window_reverse(x, window, padded_height, padded_width)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        if padded_height != height or padded_width != width:
            x = x[:, :height, :width, :].contiguous()
        x = shortcut + x.reshape(b, height * width, c)
        return x + self.output.dense(self.act(self.intermediate.dense(self.layernorm_after(x))))


class SwinPatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, height, width):
        b, _, c = x.shape
        x = x.view(b, height, width, c)
        if height % 2 == 1 or width % 2 == 1:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        x = torch.cat([x[:, 0::2, 0::2, :], x[:, 1::2, 0::2, :], x[:, 0::2, 1::2, :], x[:, 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, c, i, resolution):
        super().__init__()
        dim = c["embed_dim"] * 2**i
        window = c["window_size"]
        self.blocks = nn.ModuleList(
            SwinLayer(c, dim, c["num_heads"][i], 0 if j % 2 == 0 else window // 2, resolution) for j in range(c["depths"][i])
        )
        self.downsample = SwinPatchMerging(dim) if i < len(c["depths"]) - 1 else None

    def forward(self, x, height, width):
        for block in self.blocks:
            x = block(x, height, width)
        if self.downsample is not None:
            x = self.downsample(x, height, width)
            height, width = (height + 1) // 2, (width + 1) // 2
        return x, height, width


class SwinPatchEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.patch = c["patch_size"]
        self.projection = nn.Conv2d(c.get("num_channels", 3), c["embed_dim"], kernel_size=self.patch, stride=self.patch)

    def forward(self, pixel_values):
        height, width = pixel_values.shape[2:]
        pad_right, pad_bottom = (self.patch - width % self.patch) % self.patch, (self.patch - height % self.patch) % self.patch
        if pad_right or pad_bottom:
            pixel_values = F.pad(pixel_values, (0, pad_right, 0, pad_bottom))
        return self.projection(pixel_values)


class SwinEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        if c.get("use_absolute_embeddings", False):
            raise ValueError("the Swin peer does not implement use_absolute_embeddings")
        self.patch_embeddings = SwinPatchEmbeddings(c)
        # transformers builds this LayerNorm with torch's default eps.
        self.norm = nn.LayerNorm(c["embed_dim"])

    def forward(self, pixel_values):
        x = self.patch_embeddings(pixel_values)
        height, width = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SwinEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        grid = math.ceil(c.get("image_size", 224) / c["patch_size"])
        resolutions = []
        for _ in c["depths"]:
            resolutions.append((grid, grid))
            grid = (grid + 1) // 2
        self.layers = nn.ModuleList(SwinStage(c, i, resolutions[i]) for i in range(len(c["depths"])))


class SwinBase(nn.Module):
    """SwinModel: embeddings, encoder, final LayerNorm (the `swin` of the classifier's keys)."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = SwinEmbeddings(c)
        self.encoder = SwinEncoder(c)
        self.layernorm = nn.LayerNorm(c["embed_dim"] * 2 ** (len(c["depths"]) - 1), eps=c.get("layer_norm_eps", 1e-5))

    def forward(self, pixel_values):
        x, height, width = self.embeddings(pixel_values)
        for stage in self.encoder.layers:
            x, height, width = stage(x, height, width)
        return self.layernorm(x)


class Swin(nn.Module):
    """SwinForImageClassification: the mean of the last stage's tokens, then the classifier."""

    def __init__(self, c):
        super().__init__()
        self.swin = SwinBase(c)
        self.classifier = nn.Linear(c["embed_dim"] * 2 ** (len(c["depths"]) - 1), num_labels(c))

    def forward(self, pixel_values):
        return self.classifier(self.swin(pixel_values).mean(1))


# ---------------------------------------------------------------------------------------------


def build_model(name, config_path):
    """The peer of `name` (a key of bench/inference-models.json) from a config.json, in eval mode."""
    with open(config_path) as file:
        config = json.load(file)
    if name == "vit":
        model = ViT(config)
    elif name == "resnet50":
        model = torchvision.models.resnet50(num_classes=num_labels(config))
    elif name == "segformer":
        model = Segformer(config)
    elif name == "detr":
        model = Detr(config)
    elif name == "swin":
        model = Swin(config)
    else:
        raise ValueError(f"no PyTorch peer for model {name!r} (expected vit, resnet50, segformer, detr or swin)")
    return model.eval()


def output_names(name):
    return ["logits", "pred_boxes"] if name == "detr" else ["logits"]
