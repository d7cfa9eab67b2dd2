"""Writes the fuzz targets' seed corpora into native/core/fuzz/corpus/<target>/.

Run from the repository root with a Python that has torch and Pillow (Debian: python3-torch,
python3-pil): `python3 native/core/fuzz/make_corpus.py [target ...]` (every target when none is
named). The seeds are small valid files of every
kind each reader accepts, and a few near-valid ones that stop at each of its checks; the fuzzer
mutates from there. Inputs that once found a bug are kept beside them as regression-* files,
which this script leaves alone.
"""

import collections
import io
import json
import os
import struct
import sys
import zlib

import torch
from PIL import Image

ROOT = os.path.join("native", "core", "fuzz", "corpus")


def target_dir(target):
    path = os.path.join(ROOT, target)
    os.makedirs(path, exist_ok=True)
    return path


def write(target, name, data):
    with open(os.path.join(target_dir(target), name), "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------------------------
# safetensors: an 8-byte little-endian header length, the JSON header, the data section.

DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape)], laid out in order; data bytes count up."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in tensors:
        size = DTYPES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    data = bytes(i % 251 for i in range(offset))
    return struct.pack("<Q", len(text)) + text + data


def make_safetensors():
    write("safetensors", "f32_2x3.safetensors", safetensors([("weight", "F32", [2, 3])]))
    write(
        "safetensors",
        "every_dtype_with_metadata.safetensors",
        safetensors(
            [(f"t.{dtype.lower()}", dtype, [2]) for dtype in DTYPES],  # decreasing size: all aligned
            metadata={"format": "pt", "note": "seed"},
        ),
    )
    write("safetensors", "scalar_and_empty.safetensors", safetensors([("empty", "F32", [0, 4]), ("scalar", "F64", [])]))
    write("safetensors", "no_tensors.safetensors", safetensors([]))
    write("safetensors", "misaligned_data.safetensors", safetensors([("a", "I8", [3]), ("b", "F32", [2])], pad=False))
    # Near-valid: each stops at one check of the reader.
    valid = safetensors([("weight", "F32", [2, 2])])
    write("safetensors", "truncated_data.safetensors", valid[:-3])
    write("safetensors", "header_length_one_short.safetensors", struct.pack("<Q", struct.unpack("<Q", valid[:8])[0] - 1) + valid[8:])
    overlap = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}
    text = json.dumps(overlap).encode()
    write("safetensors", "overlapping_spans.safetensors", struct.pack("<Q", len(text)) + text + b"\0" * 4)


# ------------------------------------------------------------------------------------------
# torch.save archives (pytorch_model.bin)


def torch_save(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def with_zip64_fields(archive):
    """The archive with every central directory size and offset moved to a zip64 extra field, and
    a zip64 end record, as torch.save writes them when records or the file pass 4 GiB."""
    eocd = archive.rindex(b"PK\x05\x06")
    entries, size, offset = struct.unpack("<HII", archive[eocd + 10 : eocd + 20])
    directory, out = archive[offset : offset + size], b""
    at = 0
    for _ in range(entries):
        fixed = bytearray(directory[at : at + 46])
        name_size, extra_size, comment_size = struct.unpack("<HHH", fixed[28:34])
        compressed, uncompressed = struct.unpack("<II", fixed[20:28])
        (header,) = struct.unpack("<I", fixed[42:46])
        rest = directory[at + 46 : at + 46 + name_size + extra_size + comment_size]
        zip64 = struct.pack("<HHQQQ", 1, 24, uncompressed, compressed, header)
        fixed[20:28] = struct.pack("<II", 0xFFFFFFFF, 0xFFFFFFFF)
        fixed[42:46] = struct.pack("<I", 0xFFFFFFFF)
        fixed[30:32] = struct.pack("<H", extra_size + len(zip64))
        name, extra, comment = rest[:name_size], rest[name_size : name_size + extra_size], rest[name_size + extra_size :]
        out += bytes(fixed) + name + extra + zip64 + comment
        at += 46 + name_size + extra_size + comment_size
    zip64_end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, len(out), offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, offset + len(out), 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return archive[:offset] + out + zip64_end + locator + end


def make_torch_pickle():
    torch.manual_seed(0)
    write("torch_pickle", "linear_state_dict.bin", torch_save(torch.nn.Linear(3, 2).state_dict()))
    base = torch.arange(12.0).view(3, 4)
    views = collections.OrderedDict(row=base[1], transposed=base.t(), whole=base, strided=base[:, ::2])
    write("torch_pickle", "shared_storage_views.bin", torch_save(views))
    dtypes = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8]
    every = {str(dtype): torch.arange(3).to(dtype) for dtype in dtypes}
    every["uint8"] = torch.tensor([0, 255], dtype=torch.uint8)
    every["bool"] = torch.tensor([True, False])
    write("torch_pickle", "every_dtype.bin", torch_save(every))
    write("torch_pickle", "scalar_empty_parameter.bin",
          torch_save({"scalar": torch.tensor(2.5), "empty": torch.empty(0, 5), "param": torch.nn.Parameter(torch.ones(2))}))
    write("torch_pickle", "protocol4.bin", torch_save({"w": torch.ones(2, 2)}, pickle_protocol=4))
    write("torch_pickle", "zip64_fields.bin", with_zip64_fields(torch_save({"w": torch.arange(4.0)})))
    # Near-valid: refused with a message, each for its own reason.
    write("torch_pickle", "legacy_format.bin", torch_save({"w": torch.ones(2)}, _use_new_zipfile_serialization=False))
    write("torch_pickle", "nested_dict.bin", torch_save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}))


# ------------------------------------------------------------------------------------------
# JSON configs: the fixtures' own files, and hand-written ones for the other spellings


def make_json_config():
    fixtures = os.path.join("test", "fixtures")
    seen = set()
    sources = []
    for model in sorted(os.listdir(fixtures)) + [os.path.join("configs", m) for m in sorted(os.listdir(os.path.join(fixtures, "configs")))]:
        for name in ("config.json", "preprocessor_config.json"):
            path = os.path.join(fixtures, model, name)
            if os.path.isfile(path) and os.path.getsize(path) <= 8192:
                sources.append((model.replace(os.sep, "_") + "_" + name, path))
    for name, path in sources:
        with open(path, "rb") as f:
            data = f.read()
        if data not in seen:
            seen.add(data)
            write("json_config", name, data)
    seeds = {
        "legacy_detr_feature_extractor.json": {"feature_extractor_type": "DetrFeatureExtractor", "size": 800, "max_size": 1333,
                                               "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": 0.5},
        "clip_center_crop.json": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 24}, "do_center_crop": True,
                                  "crop_size": 20, "resample": 3},
        "maskformer_size_divisor.json": {"image_processor_type": "Mask2FormerImageProcessor", "size": {"shortest_edge": 30,
                                         "longest_edge": 50}, "size_divisor": 32, "ignore_index": 255, "reduce_labels": False},
        "convnext_crop_pct.json": {"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 40}, "crop_pct": 0.5},
        "no_resize.json": {"do_resize": False, "do_rescale": False, "rescale_factor": 1, "do_normalize": None, "size": None},
        "typed_fields.json": {"hidden_size": 64.0, "image_size": [30, 40], "patch_size": 4, "layer_norm_eps": 1e-12, "qkv_bias": True,
                              "depths": [2, 2], "hidden_act": "gelu", "id2label": {"0": "a", "1": "b"}, "num_labels": 2,
                              "drop_path_rate": 0.1, "out_features": ["stage1", "stage2"]},
    }
    for name, value in seeds.items():
        write("json_config", name, json.dumps(value, indent=1).encode())
    # Near-valid: at the nesting limit, one level past it, and a key given twice.
    write("json_config", "nesting_at_limit.json", b"[" * 128 + b"]" * 128)
    write("json_config", "nesting_past_limit.json", b'{"a":' * 129 + b"1" + b"}" * 129)
    write("json_config", "duplicate_key.json", b'{"size": 1, "size": {"height": 2, "width": 3}}')


# ------------------------------------------------------------------------------------------
# Images: every PNG colour type and depth Pillow's loader handles, interlaced too, and JPEG's
# baseline, progressive, grayscale and Adobe CMYK flavours.


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png(width, height, color_type, depth, sample, interlace=False, extra=b""):
    """sample(x, y) -> the pixel's samples (a tuple of ints of `depth` bits)."""
    def rows(xs, ys):
        out = b""
        for y in ys:
            bits = []
            for x in xs:
                bits.extend(sample(x, y))
            line = 0
            count = 0
            packed = bytearray()
            for value in bits:
                if depth == 16:
                    packed += struct.pack(">H", value)
                    continue
                line = (line << depth) | value
                count += depth
                if count == 8:
                    packed.append(line)
                    line = count = 0
            if count:
                packed.append(line << (8 - count))
            out += b"\0" + bytes(packed)  # filter type 0
        return out

    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            xs, ys = range(x0, width, dx), range(y0, height, dy)
            if len(xs) and len(ys):
                raw += rows(xs, ys)
    else:
        raw = rows(range(width), range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 1 if interlace else 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


def make_image():
    top = {1: 1, 2: 3, 4: 15, 8: 255, 16: 65535}
    for depth in (1, 2, 4, 8, 16):
        write("image", f"gray{depth}.png", png(5, 4, 0, depth, lambda x, y, d=depth: ((x + 2 * y) % (top[d] + 1),)))
    write("image", "gray16_labels.png", png(3, 3, 0, 16, lambda x, y: ((x + y) * 40,)))
    write("image", "gray8_trns.png", png(4, 3, 0, 8, lambda x, y: (x * 60,), extra=png_chunk(b"tRNS", b"\0\0")))
    write("image", "rgb8_interlaced.png", png(9, 7, 2, 8, lambda x, y: (x * 25, y * 30, (x * y) % 256), interlace=True))
    write("image", "rgb16.png", png(3, 2, 2, 16, lambda x, y: (x * 20000, y * 30000, 65535)))
    write("image", "gray_alpha8.png", png(3, 3, 4, 8, lambda x, y: (x * 80, y * 100)))
    write("image", "rgba8_interlaced.png", png(5, 5, 6, 8, lambda x, y: (x * 50, y * 50, 7, 255 - x), interlace=True))
    palette = png_chunk(b"PLTE", bytes([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]))
    write("image", "palette4_trns.png", png(6, 2, 3, 4, lambda x, y: ((x + y) % 4,), extra=palette + png_chunk(b"tRNS", b"\x00\x80")))
    write("image", "palette8.png", png(4, 4, 3, 8, lambda x, y: ((x * y) % 4,), extra=palette))
    whole = png(6, 5, 2, 8, lambda x, y: (x * 40, y * 50, 128))
    write("image", "truncated.png", whole[: len(whole) - 20])

    def jpeg(mode, size, **kwargs):
        image = Image.new("RGB", size)
        image.putdata([((x * 37) % 256, (y * 53) % 256, ((x + y) * 11) % 256) for y in range(size[1]) for x in range(size[0])])
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, "JPEG", **kwargs)
        return buffer.getvalue()

    write("image", "rgb_420.jpg", jpeg("RGB", (16, 12), quality=50))
    write("image", "rgb_444_progressive.jpg", jpeg("RGB", (9, 7), quality=40, subsampling=0, progressive=True))
    write("image", "gray.jpg", jpeg("L", (8, 8), quality=60))
    write("image", "cmyk_adobe.jpg", jpeg("CMYK", (8, 8), quality=50))
    write("image", "rgb_restart_markers.jpg", jpeg("RGB", (24, 16), quality=30, restart_marker_blocks=1))
    whole = jpeg("RGB", (16, 16), quality=50)
    write("image", "truncated.jpg", whole[: len(whole) * 3 // 4])

    def pillow(image, fmt, **kwargs):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    def pattern(mode, size, shift=0):
        image = Image.new("RGBA", size)
        image.putdata([((x * 37 + shift) % 256, (y * 53) % 256, ((x + y) * 11) % 256, (x * 90 + y * 20) % 256)
                       for y in range(size[1]) for x in range(size[0])])
        return image.convert(mode)

    # WebP: lossy (VP8), lossless (VP8L), lossy with alpha (VP8X + ALPH), an animation (ANIM, ANMF).
    write("image", "lossy.webp", pillow(pattern("RGB", (8, 6)), "WEBP", quality=50))
    write("image", "lossless_alpha.webp", pillow(pattern("RGBA", (5, 4)), "WEBP", lossless=True))
    write("image", "lossy_alpha.webp", pillow(pattern("RGBA", (6, 5)), "WEBP", quality=40))
    write("image", "animated.webp", pillow(pattern("RGB", (6, 4)), "WEBP", save_all=True, append_images=[pattern("RGB", (6, 4), 99)],
                                            duration=40, quality=30))
    whole = pillow(pattern("RGB", (8, 8)), "WEBP", lossless=True)
    write("image", "truncated.webp", whole[: len(whole) * 2 // 3])
    # GIF: a palette (GIF87a), a transparency index, an interlaced frame (16 rows or more), an
    # animation (NETSCAPE2.0 loop), a gray table.
    write("image", "palette.gif", pillow(pattern("RGB", (7, 5)).convert("P", palette=Image.ADAPTIVE, colors=8), "GIF"))
    write("image", "transparency.gif", pillow(pattern("RGB", (6, 4)).convert("P", palette=Image.ADAPTIVE, colors=4), "GIF", transparency=1))
    write("image", "interlaced.gif", pillow(pattern("RGB", (4, 17)).convert("P", palette=Image.ADAPTIVE, colors=16), "GIF", interlace=True))
    write("image", "animated.gif", pillow(pattern("RGB", (5, 5)), "GIF", save_all=True, append_images=[pattern("RGB", (5, 5), 77)],
                                          duration=30, loop=0))
    write("image", "gray.gif", pillow(pattern("L", (6, 3)), "GIF"))
    whole = pillow(pattern("RGB", (9, 9)), "GIF")
    write("image", "truncated.gif", whole[: len(whole) - 10])


if __name__ == "__main__":
    targets = sys.argv[1:] or ["safetensors", "torch_pickle", "json_config", "image"]
    for target in targets:
        globals()["make_" + target]()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(ROOT) for f in files)
    print(f"{ROOT}: {sum(len(files) for _, _, files in os.walk(ROOT))} files, {total // 1024} KiB")
