#!/usr/bin/env python3
"""Regenerates the golden data that resample_test.cpp and image_test.cpp compare against.

Pillow is the reference: the C++ code must give exactly its bytes. Generated with Debian 12's
python3 (Pillow 9.4.0 on libjpeg-turbo 2.1.5 / zlib 1.2.13, numpy 1.24); run from the
repository root:

    mkdir -p build && cc -O2 -o build/make_ycck native/core/tests/data/make_ycck.c -ljpeg
    python3 native/core/tests/data/make_golden.py build/make_ycck

Outputs (all under native/core/tests/data/):
  resize_golden.json  "cases": one row per case: [in_w, in_h, channels, pattern, seed, resample,
                      out_w, out_h, fnv1a64(PIL output bytes)]; the input pixels come from
                      make_pixels() below, which the C++ test reimplements.
                      "photo_cases": [fixture photo, channels, resample, out_w, out_h, hash]:
                      the photo converted to L / RGB / RGBA (alpha = (3x + y) % 256), resized.
  images/*            small JPEG/PNG/WebP/GIF files covering the decoders' cases (PNGs written
                      by the encoder below: every bit depth, color type, tRNS, Adam7
                      interlacing; WebP by Pillow's libwebp 1.2.4: lossy, lossless, alpha,
                      animated; GIFs by Pillow and by the encoder below: offset and oversized
                      first frames, interlacing, local tables, transparency, gray tables,
                      indices past the table, animations of which only frame 1 is read).
  decode_golden.json  per file: size, the channel count the decoder must return, and fnv1a64 of
                      what it must return ("native"), of Image.convert("RGB") and of
                      Image.convert("L"); for GIFs also "label_map", np.array(Image.open(f)).
Hashes are FNV-1a 64-bit over the interleaved bytes, as 16 hex digits.
"""
import io
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "..", ".."))
MASK64 = (1 << 64) - 1


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return "%016x" % h


class Lcg:
    """64-bit LCG (Knuth's MMIX constants); each byte is the top 8 bits of the next state."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def byte(self):
        self.state = (self.state * 6364136223846793005 + 1442695040888963407) & MASK64
        return self.state >> 56


def make_pixels(w, h, c, pattern, seed):
    """Pattern 0: noise. 1: 0/255 stripes (alpha: noise). 2: gradient plus a little noise."""
    rng = Lcg(seed)
    out = bytearray()
    for y in range(h):
        for x in range(w):
            for b in range(c):
                if pattern == 0 or (pattern == 1 and c == 4 and b == 3):
                    out.append(rng.byte())
                elif pattern == 1:
                    out.append(255 if ((x >> 1) + y // 3 + b) & 1 else 0)
                else:
                    out.append((x * 7 + y * 5 + b * 60 + (rng.byte() & 15)) & 255)
    return bytes(out)


MODES = {1: "L", 3: "RGB", 4: "RGBA"}
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

RESIZE_PAIRS = [
    ((1, 1), [(1, 1), (3, 2), (5, 5)]),
    ((7, 1), [(3, 1), (14, 1), (1, 1)]),
    ((1, 9), [(1, 4), (1, 20), (3, 3)]),
    ((16, 16), [(8, 8), (5, 5), (32, 32), (1, 1), (16, 7), (9, 16)]),
    ((31, 17), [(10, 5), (62, 34), (93, 51), (7, 17), (31, 4), (1, 17), (13, 1)]),
    ((37, 29), [(12, 9), (5, 4), (100, 77), (37, 30), (36, 29)]),
    ((64, 48), [(9, 7), (21, 16), (127, 95)]),
]


def make_resize_golden():
    cases = []
    pair_index = 0
    for (w, h), outs in RESIZE_PAIRS:
        for ow, oh in outs:
            for f in sorted(FILTERS):
                for c in (1, 3, 4):
                    pattern = (pair_index + f + c) % 3
                    seed = (w * 1000003 + h * 10007 + c * 101 + pattern * 7 + ow * 31 + oh) & MASK64
                    im = Image.frombytes(MODES[c], (w, h), make_pixels(w, h, c, pattern, seed))
                    out = im.resize((ow, oh), resample=f)
                    cases.append([w, h, c, pattern, seed, f, ow, oh, fnv1a64(out.tobytes())])
            pair_index += 1
    # A larger downscale like the processors' (a 200x150 photo-sized input to 32x32).
    for f in sorted(FILTERS):
        for c in (1, 3, 4):
            w, h, ow, oh, pattern, seed = 200, 150, 32, 32, 2, 4242 + c
            im = Image.frombytes(MODES[c], (w, h), make_pixels(w, h, c, pattern, seed))
            out = im.resize((ow, oh), resample=f)
            cases.append([w, h, c, pattern, seed, f, ow, oh, fnv1a64(out.tobytes())])
    # The fixture photos, as transformers resizes them: decoded, converted, resized.
    photo_cases = []
    for rel in ("test/fixtures/images/chelsea.png", "test/fixtures/images/rocket.jpg"):
        photo = Image.open(os.path.join(ROOT, rel))
        for c in (1, 3, 4):
            im = photo.convert(MODES[c])
            if c == 4:
                # A varying alpha (alpha = (x * 3 + y) % 256) so premultiplication matters.
                alpha = (np.arange(im.size[0])[None, :] * 3 + np.arange(im.size[1])[:, None]) % 256
                im.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
            for f in sorted(FILTERS):
                for ow, oh in ((224, 224), (37, 91), (700, 500), (320, 213)):
                    out = im.resize((ow, oh), resample=f)
                    photo_cases.append([rel, c, f, ow, oh, fnv1a64(out.tobytes())])
    with open(os.path.join(HERE, "resize_golden.json"), "w") as fh:
        fh.write('{"generator": "make_golden.py (Pillow %s Image.resize)",\n "cases": [\n'
                 % Image.__version__)
        fh.write(",\n".join("  " + json.dumps(c) for c in cases))
        fh.write("\n],\n \"photo_cases\": [\n")
        fh.write(",\n".join("  " + json.dumps(c) for c in photo_cases))
        fh.write("\n]}\n")
    return len(cases) + len(photo_cases)


# ---------------------------------------------------------------------------------------------
# A small PNG encoder: Pillow cannot write interlaced, 2/4-bit gray or 16-bit color PNGs.

ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def pack_row(samples, depth):
    if depth == 16:
        return b"".join(struct.pack(">H", int(s)) for s in samples)
    if depth == 8:
        return bytes(int(s) for s in samples)
    per = 8 // depth
    out = bytearray()
    for i in range(0, len(samples), per):
        byte = 0
        group = list(samples[i:i + per]) + [0] * (per - len(samples[i:i + per]))
        for s in group:
            byte = (byte << depth) | int(s)
        out.append(byte)
    return bytes(out)


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def filter_rows(rows, bpp):
    """Filters each row with type (row index % 5), so every PNG filter is exercised."""
    out = bytearray()
    prev = bytes(len(rows[0])) if rows else b""
    for i, row in enumerate(rows):
        ftype = i % 5
        out.append(ftype)
        for j, x in enumerate(row):
            a = row[j - bpp] if j >= bpp else 0
            b = prev[j]
            c = prev[j - bpp] if j >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][ftype]
            out.append((x - pred) & 255)
        prev = row
    return bytes(out)


def encode_png(pixels, depth, color_type, palette=None, trns=None, interlace=False):
    """pixels: int array [h, w, samples]."""
    h, w, spp = pixels.shape
    assert spp == SAMPLES[color_type]
    bpp = max(1, depth * spp // 8)
    raw = b""
    if not interlace:
        raw = filter_rows([pack_row(pixels[y].reshape(-1), depth) for y in range(h)], bpp)
    else:
        for x0, y0, dx, dy in ADAM7:
            sub = pixels[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            raw += filter_rows([pack_row(sub[y].reshape(-1), depth) for y in range(sub.shape[0])], bpp)
    data = b"\x89PNG\r\n\x1a\n"
    data += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 1 if interlace else 0))
    data += chunk(b"gAMA", struct.pack(">I", 45455 * 2))  # a gamma that must NOT be applied
    if palette is not None:
        data += chunk(b"PLTE", bytes(np.asarray(palette, dtype=np.uint8).reshape(-1)))
    if trns is not None:
        data += chunk(b"tRNS", trns)
    z = zlib.compress(raw, 9)
    data += chunk(b"IDAT", z[: len(z) // 2]) + chunk(b"IDAT", z[len(z) // 2:])  # split IDAT
    data += chunk(b"IEND", b"")
    return data


def content(w, h, spp, maxval, seed):
    rng = Lcg(seed)
    a = np.zeros((h, w, spp), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            for b in range(spp):
                v8 = (x * 255 // max(1, w - 1) + y * 9 + b * 70 + (rng.byte() & 31)) & 255
                if maxval == 65535:
                    a[y, x, b] = (v8 << 8) | rng.byte()
                else:
                    a[y, x, b] = v8 * maxval // 255
    return a


# ---------------------------------------------------------------------------------------------
# A small GIF writer: Pillow cannot write offset, interlaced-on-demand or table-less frames.


def lzw_encode(indices, min_code_size):
    """Literal codes only, a clear code before the table could widen the codes: valid LZW that
    every decoder reads at a fixed width of min_code_size + 1 bits."""
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    per_clear = (1 << min_code_size) - 3
    codes = []
    for i, v in enumerate(indices):
        if i % per_clear == 0:
            codes.append(clear)
        codes.append(int(v))
    codes.append(end)
    width, acc, nbits, out = min_code_size + 1, 0, 0, bytearray()
    for c in codes:
        acc |= c << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 255)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 255)
    blocks = bytearray([min_code_size])
    for i in range(0, len(out), 255):
        part = out[i:i + 255]
        blocks += bytes([len(part)]) + part
    return bytes(blocks + b"\0")


def gif_table(colours):
    bits = max(1, (len(colours) - 1).bit_length())
    table = bytes(np.asarray(colours, dtype=np.uint8).reshape(-1))
    return bits, table + bytes(3 * (1 << bits) - len(table))


def encode_gif(screen, frames, global_colours=None, version=b"GIF89a"):
    """frames: dicts with pixels (int array [h, w] of indices), x, y, and optionally colours (a
    local table), interlace, transparency, min_code_size."""
    data = version
    flags = 0
    table = b""
    if global_colours is not None:
        bits, table = gif_table(global_colours)
        flags = 0x80 | 0x70 | (bits - 1)
    data += struct.pack("<HHBBB", screen[0], screen[1], flags, 0, 0) + table
    for f in frames:
        if f.get("transparency") is not None or len(frames) > 1:
            t = f.get("transparency")
            data += b"\x21\xf9\x04" + struct.pack("<BHB", 1 if t is not None else 0, 10, t or 0) + b"\0"
        pixels = np.asarray(f["pixels"])
        h, w = pixels.shape
        flags, table = 0, b""
        if f.get("colours") is not None:
            bits, table = gif_table(f["colours"])
            flags = 0x80 | (bits - 1)
        rows = list(range(h))
        if f.get("interlace"):
            flags |= 0x40
            rows = list(range(0, h, 8)) + list(range(4, h, 8)) + list(range(2, h, 4)) + list(range(1, h, 2))
        data += b"\x2c" + struct.pack("<HHHHB", f["x"], f["y"], w, h, flags) + table
        data += lzw_encode(pixels[rows].reshape(-1), f.get("min_code_size", 8))
    return data + b"\x3b"


def make_images(ycck_helper):
    out = {}
    w, h = 37, 23

    def save_pil(name, im, **kw):
        buf = io.BytesIO()
        im.save(buf, **kw)
        out[name] = buf.getvalue()

    rgb = Image.frombytes("RGB", (w, h), bytes(content(w, h, 3, 255, 1).astype(np.uint8).reshape(-1)))
    save_pil("jpeg_gray.jpg", rgb.convert("L"), format="JPEG", quality=85)
    save_pil("jpeg_rgb420.jpg", rgb, format="JPEG", quality=90)
    save_pil("jpeg_rgb422.jpg", rgb, format="JPEG", quality=90, subsampling=1)
    save_pil("jpeg_rgb444.jpg", rgb, format="JPEG", quality=90, subsampling=0)
    save_pil("jpeg_progressive.jpg", rgb, format="JPEG", quality=80, progressive=True, optimize=True)
    cmyk = Image.frombytes("CMYK", (w, h), bytes(content(w, h, 4, 255, 2).astype(np.uint8).reshape(-1)))
    save_pil("jpeg_cmyk.jpg", cmyk, format="JPEG", quality=90)
    if ycck_helper:
        # Adobe polarity: the file holds inverted CMYK.
        inverted = bytes(255 - v for v in cmyk.tobytes())
        path = os.path.join(HERE, "images", "jpeg_ycck.jpg")
        subprocess.run([ycck_helper, str(w), str(h), path], input=inverted, check=True)
        with open(path, "rb") as fh:
            out["jpeg_ycck.jpg"] = fh.read()

    def png(name, depth, color_type, interlace=False, size=(w, h), palette_size=None, trns=None, seed=3):
        pw, ph = size
        spp = SAMPLES[color_type]
        if color_type == 3:
            pixels = content(pw, ph, 1, 255, seed) % palette_size
            rng = Lcg(seed + 100)
            palette = [[rng.byte(), rng.byte(), rng.byte()] for _ in range(palette_size)]
        else:
            pixels = content(pw, ph, spp, (1 << depth) - 1, seed)
            palette = None
        if trns == "auto":
            if color_type == 3:
                trns = bytes((i * 37) & 255 for i in range(max(1, palette_size - 1)))  # shorter than PLTE
            elif color_type == 0:
                trns = struct.pack(">H", int(pixels[0, 0, 0]))
            else:
                trns = struct.pack(">HHH", *[int(v) for v in pixels[0, 0]])
        out[name] = encode_png(pixels, depth, color_type, palette, trns, interlace)

    png("png_gray1.png", 1, 0)
    png("png_gray2.png", 2, 0)
    png("png_gray4.png", 4, 0)
    png("png_gray8.png", 8, 0)
    png("png_gray16.png", 16, 0)
    png("png_gray8_trns.png", 8, 0, trns="auto")
    png("png_graya8.png", 8, 4)
    png("png_graya16.png", 16, 4)
    png("png_rgb8.png", 8, 2)
    png("png_rgb16.png", 16, 2)
    png("png_rgb8_trns.png", 8, 2, trns="auto")
    png("png_rgba8.png", 8, 6)
    png("png_rgba16.png", 16, 6)
    png("png_pal1.png", 1, 3, palette_size=2)
    png("png_pal2.png", 2, 3, palette_size=4)
    png("png_pal4.png", 4, 3, palette_size=13)
    png("png_pal8.png", 8, 3, palette_size=200)
    png("png_pal8_trns.png", 8, 3, palette_size=60, trns="auto")
    png("png_rgb8_interlaced.png", 8, 2, interlace=True)
    png("png_pal4_interlaced.png", 4, 3, interlace=True, palette_size=9, trns="auto")
    png("png_graya16_interlaced.png", 16, 4, interlace=True)
    png("png_gray1_interlaced.png", 1, 0, interlace=True)
    png("png_rgba8_interlaced_1x1.png", 8, 6, interlace=True, size=(1, 1))
    png("png_rgb8_interlaced_3x2.png", 8, 2, interlace=True, size=(3, 2))
    png("png_gray8_interlaced_9x1.png", 8, 0, interlace=True, size=(9, 1))

    # WebP through Pillow's libwebp.
    rgba = rgb.convert("RGBA")
    alpha = (np.arange(w)[None, :] * 7 + np.arange(h)[:, None] * 11) % 256
    rgba.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
    save_pil("webp_lossy_rgb.webp", rgb, format="WEBP", quality=80)
    save_pil("webp_lossy_rgba.webp", rgba, format="WEBP", quality=75)
    save_pil("webp_lossless_rgb.webp", rgb, format="WEBP", lossless=True)
    save_pil("webp_lossless_rgba.webp", rgba, format="WEBP", lossless=True)
    second = Image.frombytes("RGB", (w, h), bytes(content(w, h, 3, 255, 9).astype(np.uint8).reshape(-1)))
    save_pil("webp_animated.webp", rgb, format="WEBP", save_all=True, append_images=[second, rgb.convert("L").convert("RGB")],
             duration=100, loop=0, quality=90)
    save_pil("webp_animated_lossless_rgba.webp", rgba, format="WEBP", save_all=True, append_images=[second.convert("RGBA")],
             duration=50, lossless=True)

    # GIF through Pillow: an adaptive palette, a gray image (an identity table: mode L), and an
    # animation whose later frames must not be read.
    save_pil("gif_pillow_rgb.gif", rgb, format="GIF")
    save_pil("gif_pillow_gray.gif", rgb.convert("L"), format="GIF")
    save_pil("gif_pillow_animated.gif", rgb, format="GIF", save_all=True, append_images=[second, rgb.transpose(Image.FLIP_LEFT_RIGHT)],
             duration=80, loop=0)

    # GIF by hand.
    rng = Lcg(77)
    colours16 = [[rng.byte(), rng.byte(), rng.byte()] for _ in range(16)]
    colours8 = [[rng.byte(), rng.byte(), rng.byte()] for _ in range(8)]

    def indices(fw, fh, count, seed):
        return content(fw, fh, 1, 255, seed)[:, :, 0] % count

    # A first frame smaller than the screen, offset: index 0 around it.
    out["gif_offset_frame.gif"] = encode_gif((w, h), [dict(pixels=indices(20, 11, 16, 11), x=9, y=5, min_code_size=4)], colours16)
    # A first frame reaching past the screen: the canvas grows to hold it.
    out["gif_frame_past_screen.gif"] = encode_gif((20, 10), [dict(pixels=indices(15, 12, 16, 12), x=10, y=3)], colours16)
    out["gif_interlaced.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 16, 13), x=0, y=0, interlace=True)], colours16)
    out["gif_interlaced_3x5.gif"] = encode_gif((3, 5), [dict(pixels=indices(3, 5, 16, 14), x=0, y=0, interlace=True, min_code_size=4)],
                                               colours16)
    # A local table replaces the global one.
    out["gif_local_palette.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 8, 15), x=0, y=0, colours=colours8, min_code_size=3)],
                                              colours16)
    # A transparency index: transparent outside the frame too.
    out["gif_transparency.gif"] = encode_gif(
        (w, h), [dict(pixels=indices(30, 17, 16, 16), x=4, y=3, transparency=5, min_code_size=4)], colours16)
    # An identity gray table (mode L), with and without a transparency index.
    ramp = [[i, i, i] for i in range(256)]
    out["gif_gray_ramp.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 256, 17), x=0, y=0)], ramp)
    out["gif_gray_ramp_transparency.gif"] = encode_gif(
        (w, h), [dict(pixels=indices(25, 20, 256, 18), x=12, y=3, transparency=40, interlace=True)], ramp)
    # A gray table that is not the identity stays a palette (RGB).
    out["gif_gray_palette.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 4, 19), x=0, y=0, min_code_size=2)],
                                             [[0, 0, 0], [85, 85, 85], [170, 170, 170], [255, 255, 255]])
    # GIF87a, no colour table at all: the indices are the gray values.
    out["gif87a_no_table.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 256, 20), x=0, y=0)], None, version=b"GIF87a")
    # Indices past a 2-entry table: Pillow's palette is a gray ramp there.
    out["gif_index_past_table.gif"] = encode_gif((w, h), [dict(pixels=indices(w, h, 8, 21), x=0, y=0, min_code_size=3)],
                                                 [[200, 10, 30], [5, 250, 60]])
    # A transparency index past the end of the table.
    out["gif_transparency_past_table.gif"] = encode_gif(
        (w, h), [dict(pixels=indices(w, h - 2, 4, 25), x=0, y=2, transparency=200, min_code_size=2)], colours16[:4])
    # An animation: frame 1 is offset and transparent, frame 2 covers it all.
    out["gif_animated_offset.gif"] = encode_gif(
        (w, h), [dict(pixels=indices(11, 9, 16, 22), x=3, y=2, transparency=0, min_code_size=4),
                 dict(pixels=indices(w, h, 16, 23), x=0, y=0, colours=colours8[:4] * 4, min_code_size=4)], colours16)
    for name, data in out.items():
        with open(os.path.join(HERE, "images", name), "wb") as fh:
            fh.write(data)
    return sorted(out)


def expectations(path):
    im = Image.open(path)
    im.load()
    note = None
    if im.mode == "I":
        # 16-bit gray: Pillow's convert() clips the 16-bit value to 255 (I -> L/RGB); the
        # decoder keeps the most significant byte instead, as Pillow does for 16-bit RGB(A)/LA.
        high = (np.asarray(im).astype(np.int64) >> 8).astype(np.uint8)
        native = Image.fromarray(high, "L")
        rgb, lum = native.convert("RGB"), native
        note = "16-bit gray: high byte (Pillow would clip the 16-bit value)"
    else:
        rgb, lum = im.convert("RGB"), im.convert("L")
        has_alpha = im.mode in ("LA", "RGBA") or "transparency" in im.info
        if im.mode in ("1", "L") and not has_alpha:
            native = im.convert("L")
        elif has_alpha:
            native = im.convert("RGBA")
        else:
            native = im.convert("RGB")
    entry = {
        "width": im.size[0],
        "height": im.size[1],
        "pil_mode": im.mode,
        "channels": len(native.getbands()),
        "native": fnv1a64(native.tobytes()),
        "rgb": fnv1a64(rgb.tobytes()),
        "l": fnv1a64(lum.tobytes()),
    }
    if note:
        entry["note"] = note
    if im.format == "GIF":
        # What decode_label_map must return: np.array of the frame, its palette indices.
        entry["label_map"] = fnv1a64(np.asarray(im).tobytes())
    return entry


def main():
    ycck_helper = sys.argv[1] if len(sys.argv) > 1 else None
    n = make_resize_golden()
    names = make_images(ycck_helper)
    golden = {"generator": "make_golden.py (Pillow %s Image.open(f) + convert)" % Image.__version__,
              "images": {}}
    for name in names:
        golden["images"]["native/core/tests/data/images/" + name] = expectations(
            os.path.join(HERE, "images", name))
    for name in ("rocket.jpg", "chelsea.png"):
        rel = "test/fixtures/images/" + name
        golden["images"][rel] = expectations(os.path.join(ROOT, rel))
    with open(os.path.join(HERE, "decode_golden.json"), "w") as fh:
        json.dump(golden, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print("resize cases:", n, "images:", len(golden["images"]))


if __name__ == "__main__":
    main()
