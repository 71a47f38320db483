#!/usr/bin/env python3
"""A stand-in for `diffedit serve` that follows its HTTP contract, for working on the page.

    python3 tools/mock_serve.py [--port 7861] [--token T] [--queue 8] [--tick-ms 60] [--max-upload-mb 20]

Serves src/server/assets/ (the same files the binary embeds) at / and /assets/, and a fake /api/:
uploads are kept in memory, jobs advance through the real stages (encode, mask, inversion, decoding,
vae) on one worker thread at --tick-ms per UNet step, with server-sent events on every change. The
"mask" is a soft blob at the upper right, the "edit" recolours the picture inside the mask: nothing
is computed, but the reuse counts follow the real engine's (cached normalised difference: 0 UNet
evaluations for a new threshold; cached inversion: 2S for a new guidance). Pillow makes the PNGs when
installed; otherwise a small PNG writer does (uploads are then given back as they came).

Dev tool only: stdlib (+ optional Pillow), no tests depend on it. Special prompts for trying the
page's error paths: a target containing "fail" fails the job during decoding; "slow" makes each
tick 5x longer. --no-sse refuses the event streams, so the page's polling fallback is exercised.
"""

import argparse
import collections
import io
import json
import math
import os
import secrets
import struct
import sys
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

try:
    from PIL import Image, ImageFilter
except ImportError:  # the hand-made PNG path below
    Image = None

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "server", "assets")
MIME = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}

DEFAULTS = {"steps": 50, "encode_ratio": 0.8, "guidance": 7.5, "inversion_guidance": 1.0, "mask_samples": 10,
            "mask_noise_level": 0.6, "mask_threshold": 0.35, "alignment": "exact", "seed": 0}
TERMINAL = ("done", "failed", "cancelled")
CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class HttpError(Exception):
    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------- pictures

def png_bytes(width, height, rows):
    """A minimal RGB PNG; rows yields `width*3` bytes per row."""
    raw = b"".join(b"\x00" + bytes(r) for r in rows)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def sniff(data):
    """(format, width, height) from the header alone, like the server does before decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return "gif", w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return "bmp", abs(w), abs(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = data[12:16]
        if kind == b"VP8X" and len(data) >= 30:
            return "webp", 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if kind == b"VP8 " and len(data) >= 30:
            w, h = struct.unpack("<HH", data[26:30])
            return "webp", w & 0x3FFF, h & 0x3FFF
        if kind == b"VP8L" and len(data) >= 25:
            b = int.from_bytes(data[21:25], "little")
            return "webp", (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
        raise HttpError(422, "the WebP picture is broken")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return "jpeg", w, h
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        raise HttpError(422, "the JPEG picture is broken (no frame header)")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff", None, None
    raise HttpError(415, "unknown picture format (expected PNG, JPEG, WebP, BMP, GIF or TIFF)")


GRID = 48  # the fake "latent grid" of the normalised difference


def fake_difference(target, seed):
    """A soft blob (values 0..1 on a GRID x GRID grid) whose place depends a little on the target and seed."""
    h = zlib.crc32(f"{target}|{seed}".encode())
    cx, cy = 0.62 + (h % 7) / 100, 0.38 + (h // 7 % 7) / 100
    values = []
    for y in range(GRID):
        for x in range(GRID):
            d = math.hypot((x + 0.5) / GRID - cx, (y + 0.5) / GRID - cy)
            values.append(max(0.0, min(1.0, math.exp(-(d / 0.2) ** 2) + 0.04 * math.sin(x * 1.7 + y))))
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) for v in values]


def magma(v):
    """A rough magma: black, purple, orange, pale yellow."""
    stops = [(0, (0, 0, 4)), (0.3, (80, 18, 123)), (0.6, (211, 67, 110)), (0.8, (252, 137, 97)), (1, (252, 253, 191))]
    for (a, ca), (b, cb) in zip(stops, stops[1:]):
        if v <= b:
            t = (v - a) / (b - a)
            return tuple(round(p + (q - p) * t) for p, q in zip(ca, cb))
    return stops[-1][1]


class Picture:
    """An uploaded picture: its bytes, size, and (with Pillow) the RGB image."""

    def __init__(self, data, max_pixels):
        fmt, w, h = sniff(data)
        self.image = None
        if w is not None and w * h > max_pixels:
            raise HttpError(422, f"the picture has {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
        if Image is not None:
            try:
                im = Image.open(io.BytesIO(data))
                if im.width * im.height > max_pixels:
                    raise HttpError(422, f"the picture has {im.width}x{im.height} pixels, more than the limit")
                im.load()
            except HttpError:
                raise
            except Exception as e:
                raise HttpError(422, f"the {fmt.upper()} picture is broken: {e}")
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            self.image = im.convert("RGB")
            w, h = self.image.size
            buf = io.BytesIO()
            self.image.save(buf, "PNG")
            data = buf.getvalue()
        elif w is None:
            raise HttpError(415, "TIFF needs Pillow in this mock")
        self.png, self.width, self.height = data, w, h

    def products(self, diff, threshold, edited, target, painted=None):
        """(mask, heatmap, overlay, result or None, coverage) PNG bytes at the picture's size; `painted` (a
        Picture) replaces the automatic mask."""
        w, h = self.width, self.height
        if Image is not None:
            heat = Image.new("L", (GRID, GRID))
            heat.putdata([round(v * 255) for v in diff])
            heat = heat.resize((w, h), Image.BILINEAR)
            mask = heat.point(lambda v: 255 if v > threshold * 255 else 0)
            if painted is not None:
                mask = painted.image.convert("L").resize((w, h)).point(lambda v: 255 if v > 127 else 0)
            pal = []
            for i in range(256):
                pal.extend(magma(i / 255))
            heat_rgb = heat.copy()
            heat_rgb.putpalette(pal)
            heat_rgb = heat_rgb.convert("RGB")
            tint = Image.new("RGB", (w, h), (255, 40, 80))
            overlay = Image.composite(Image.blend(self.image, tint, 0.45), self.image, mask)
            result = None
            if edited:
                r, g, b = self.image.split()
                hue = zlib.crc32(target.encode()) % 3
                swapped = Image.merge("RGB", [(g, b, r), (b, r, g), (b, g, r)][hue])
                soft = mask.filter(ImageFilter.GaussianBlur(max(1, min(w, h) / 100)))
                result = Image.composite(swapped, self.image, soft)
            coverage = mask.histogram()[255] / (w * h)

            def enc(im):
                buf = io.BytesIO()
                im.convert("RGB").save(buf, "PNG")
                return buf.getvalue()

            return enc(mask), enc(heat_rgb), enc(overlay), enc(result) if result else None, coverage
        # Without Pillow: nearest-neighbour rows from the grid, the picture itself is not read.
        cols = [min(GRID - 1, x * GRID // w) for x in range(w)]
        covered = 0
        mask_rows, heat_rows, over_rows, res_rows = [], [], [], []
        for y in range(h):
            gy = min(GRID - 1, y * GRID // h)
            line = diff[gy * GRID:(gy + 1) * GRID]
            m = [line[c] > threshold for c in cols]
            covered += sum(m)
            mask_rows.append(b"".join(b"\xff\xff\xff" if v else b"\x00\x00\x00" for v in m))
            heat_rows.append(b"".join(bytes(magma(line[c])) for c in cols))
            over_rows.append(b"".join(b"\xff\x50\x70" if v else b"\x80\x80\x80" for v in m))
            res_rows.append(b"".join(b"\xd0\x30\x30" if v else b"\x80\x80\x80" for v in m))
        return (png_bytes(w, h, mask_rows), png_bytes(w, h, heat_rows), png_bytes(w, h, over_rows),
                png_bytes(w, h, res_rows) if edited else None, covered / (w * h))


# ---------------------------------------------------------------- jobs

class Job:
    def __init__(self, kind, image_id, source, target, params, mask_id):
        self.id = secrets.token_hex(16)
        self.kind, self.image, self.source, self.target = kind, image_id, source, target
        self.params, self.mask_id = params, mask_id
        self.status, self.stage, self.progress, self.eta_s = "queued", "queued", 0.0, None
        self.unet_evaluations, self.error = 0, None
        self.result = self.mask = self.heatmap = self.overlay = self.coverage = None
        self.created, self.started, self.seconds = time.time(), None, 0.0
        self.cancel_requested = False
        self.version = 0

    def command(self):
        p = self.params
        q = lambda s: "'" + s.replace("'", "'\\''") + "'"  # noqa: E731
        parts = ["diffedit edit --image IN.png", f"--source {q(self.source)}", f"--target {q(self.target)}",
                 "--out OUT.png"]
        for k in ("steps", "encode_ratio", "guidance", "inversion_guidance", "mask_samples", "mask_noise_level",
                  "mask_threshold", "alignment", "seed"):
            parts.append(f"--{k.replace('_', '-')} {p[k]}")
        if self.mask_id:
            parts.append("--mask MASK.png")
        return " ".join(parts)

    def to_json(self, state):
        return {"id": self.id, "kind": self.kind, "status": self.status, "stage": self.stage,
                "progress": round(self.progress, 4), "eta_s": self.eta_s,
                "queue_position": state.queue_position(self), "unet_evaluations": self.unet_evaluations,
                "error": self.error, "result": self.result, "mask": self.mask, "heatmap": self.heatmap,
                "overlay": self.overlay, "coverage": self.coverage, "params": self.params,
                "source": self.source, "target": self.target, "image": self.image, "command": self.command(),
                "seconds": round(self.seconds, 3)}


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Condition()
        self.images, self.files, self.jobs = {}, {}, {}
        self.queue = collections.deque()
        self.diff_cache, self.inversion_cache = {}, set()
        threading.Thread(target=self.worker, daemon=True).start()

    def queue_position(self, job):
        if job.status != "queued":
            return None
        try:
            return list(self.queue).index(job) + 1
        except ValueError:
            return None

    def changed(self, job):
        job.version += 1
        self.lock.notify_all()

    def store_file(self, data):
        fid = secrets.token_hex(16)
        self.files[fid] = data
        return f"/api/files/{fid}.png"

    def diff_key(self, job):
        p = job.params
        return (job.image, job.source, job.target, p["steps"], p["mask_samples"], p["mask_noise_level"],
                p["seed"], p["alignment"])

    def inversion_key(self, job):
        p = job.params
        return (job.image, job.source, p["steps"], p["encode_ratio"], p["inversion_guidance"], p["seed"],
                p["alignment"])

    def submit(self, job):
        """Queues the job, or finishes a mask job at once when its difference is cached."""
        with self.lock:
            self.jobs[job.id] = job
            if job.kind == "mask" and self.diff_key(job) in self.diff_cache:
                self.finish_products(job, self.diff_cache[self.diff_key(job)])
                job.status, job.stage, job.progress, job.eta_s = "done", "done", 1.0, 0
                job.seconds = time.time() - job.created
                self.changed(job)
                return
            if len(self.queue) >= self.args.queue:
                del self.jobs[job.id]
                raise HttpError(429, f"the queue is full ({self.args.queue} jobs waiting); try again shortly",
                                {"Retry-After": "5"})
            self.queue.append(job)
            self.changed(job)

    def finish_products(self, job, diff):
        pic = self.images[job.image]
        edited = job.kind == "edit"
        painted = self.images[job.mask_id] if job.mask_id else None
        mask, heat, over, result, coverage = pic.products(diff, job.params["mask_threshold"], edited, job.target,
                                                          painted)
        job.mask, job.heatmap, job.overlay = self.store_file(mask), self.store_file(heat), self.store_file(over)
        job.coverage = round(coverage, 6)
        if result is not None:
            job.result = self.store_file(result)

    def worker(self):
        while True:
            with self.lock:
                while not self.queue:
                    self.lock.wait()
                job = self.queue.popleft()
                for other in self.queue:
                    self.changed(other)  # queue positions moved
            try:
                self.run(job)
            except Exception as e:  # the mock must not die either
                with self.lock:
                    job.status, job.error = "failed", f"mock server error: {e}"
                    self.changed(job)

    def run(self, job):
        p = job.params
        tick = self.args.tick_ms / 1000 * (5 if "slow" in job.target else 1)
        s = int(p["encode_ratio"] * p["steps"])
        diff_cached = self.diff_key(job) in self.diff_cache
        plan = [("encode", 1, 0)]
        if not diff_cached and not (job.kind == "edit" and job.mask_id):
            plan.append(("mask", p["mask_samples"], 2))
        if job.kind == "edit":
            if self.inversion_key(job) not in self.inversion_cache:
                plan.append(("inversion", s, 2 if p["inversion_guidance"] > 1 else 1))
            plan += [("decoding", s, 2), ("vae", 1, 0)]
        total = sum(n for _, n, _ in plan)
        done = 0
        with self.lock:
            job.status, job.started = "running", time.time()
            self.changed(job)
        for stage, n, evals in plan:
            for _ in range(n):
                with self.lock:
                    if job.cancel_requested:
                        job.status, job.stage = "cancelled", "cancelled"
                        job.seconds = time.time() - job.started
                        self.changed(job)
                        return
                    job.stage = stage
                    self.changed(job)
                time.sleep(tick)
                with self.lock:
                    done += 1
                    job.unet_evaluations += evals
                    job.progress = done / total
                    elapsed = time.time() - job.started
                    job.eta_s = round(elapsed / done * (total - done), 1)
                    job.seconds = elapsed
                    if stage == "decoding" and "fail" in job.target and done > total * 0.7:
                        job.status, job.error = "failed", "decoding failed: the mock was asked to fail (\"fail\" in the target)"
                        self.changed(job)
                        return
                    self.changed(job)
        with self.lock:
            key = self.diff_key(job)
            if key not in self.diff_cache:
                self.diff_cache[key] = fake_difference(job.target, p["seed"])
            if job.kind == "edit":
                self.inversion_cache.add(self.inversion_key(job))
            self.finish_products(job, self.diff_cache[key])
            job.status, job.stage, job.progress, job.eta_s = "done", "done", 1.0, 0
            job.seconds = time.time() - job.started
            self.changed(job)


# ---------------------------------------------------------------- parameters

def parse_params(body):
    known = {"image", "source", "target", "mask"} | set(DEFAULTS)
    for k in body:
        if k not in known:
            raise HttpError(400, f"unknown parameter `{k}`")
    for k in ("image", "source", "target"):
        if not isinstance(body.get(k), str):
            raise HttpError(400, f"`{k}` is required (a string)")
    p = dict(DEFAULTS)
    for k, v in body.items():
        if k not in DEFAULTS:
            continue
        want = type(DEFAULTS[k])
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or isinstance(v, bool):
            raise HttpError(400, f"--{k.replace('_', '-')} must be a {want.__name__}, got {json.dumps(v)}")
        p[k] = v
    if p["steps"] < 1:
        raise HttpError(400, f"--steps must be at least 1, got {p['steps']}")
    if p["steps"] > 1000:
        raise HttpError(400, f"--steps must be at most 1000 (the training timesteps), got {p['steps']}")
    if not 0 < p["encode_ratio"] <= 1:
        raise HttpError(400, f"--encode-ratio must be in (0, 1], got {p['encode_ratio']}")
    if int(p["encode_ratio"] * p["steps"]) < 1:
        raise HttpError(400, f"--encode-ratio {p['encode_ratio']} with --steps {p['steps']} gives "
                             "int(ratio*steps) = 0 decoding steps; raise one of them")
    if p["mask_samples"] < 1:
        raise HttpError(400, "--mask-samples must be at least 1, got 0")
    if not 0 < p["mask_noise_level"] <= 1:
        raise HttpError(400, f"--mask-noise-level must be in (0, 1], got {p['mask_noise_level']}")
    if not 0 <= p["mask_threshold"] <= 1:
        raise HttpError(400, f"--mask-threshold must be in [0, 1], got {p['mask_threshold']}")
    if p["alignment"] not in ("exact", "notebook"):
        raise HttpError(400, f"alignment must be `exact` or `notebook`, got `{p['alignment']}`")
    return p


# ---------------------------------------------------------------- HTTP

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "diffedit-mock"

    def log_message(self, fmt, *args):
        if self.server.args.verbose:
            sys.stderr.write("mock: " + fmt % args + "\n")

    def send_body(self, status, body, ctype, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, obj, headers=None):
        self.send_body(status, json.dumps(obj).encode(), "application/json", headers)

    def handle_any(self, method):
        url = urlparse(self.path)
        try:
            if not url.path.startswith("/api/"):
                return self.static(url.path)
            token = self.server.args.token
            if token:
                q = parse_qs(url.query).get("token", [None])[0]
                if self.headers.get("Authorization") != f"Bearer {token}" and q != token:
                    raise HttpError(401, "this server needs its token: open the page as /?token=TOKEN")
            return self.api(method, url.path)
        except HttpError as e:
            if e.status == 413:
                self.close_connection = True
            self.send_json(e.status, {"error": e.message}, e.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = lambda self: self.handle_any("GET")  # noqa: E731
    do_POST = lambda self: self.handle_any("POST")  # noqa: E731
    do_DELETE = lambda self: self.handle_any("DELETE")  # noqa: E731

    def static(self, path):
        name = "index.html" if path == "/" else path[len("/assets/"):] if path.startswith("/assets/") else None
        if not name or "/" in name or name.startswith("."):
            raise HttpError(404, f"no such page: {path}")
        full = os.path.join(ASSETS, name)
        if not os.path.isfile(full):
            raise HttpError(404, f"no such asset: {name}")
        with open(full, "rb") as f:
            # The policy the real server is meant to send: the page must work under it.
            self.send_body(200, f.read(), MIME.get(os.path.splitext(name)[1], "application/octet-stream"),
                           {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    def read_body(self, limit):
        n = int(self.headers.get("Content-Length") or 0)
        if n > limit:
            raise HttpError(413, f"the upload is {n / 1e6:.1f} MB, more than the limit of {limit // 1_000_000} MB")
        return self.rfile.read(n)

    def read_json(self):
        try:
            body = json.loads(self.read_body(1_000_000) or b"null")
        except ValueError as e:
            raise HttpError(400, f"malformed JSON: {e}")
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object")
        return body

    def api(self, method, path):
        st, args = self.server.state, self.server.args
        parts = path.strip("/").split("/")[1:]
        if parts == ["health"] and method == "GET":
            return self.send_json(200, {
                "ok": True,
                "model": {"unet": "models/diffedit-shapes/unet", "vae": "models/diffedit-shapes/vae",
                          "text_encoder": "models/diffedit-shapes/text_encoder",
                          "tokenizer": "models/diffedit-shapes/tokenizer",
                          "scheduler": "models/diffedit-shapes/scheduler"},
                "model_name": args.model_name, "native_size": args.native_size, "defaults": DEFAULTS,
                "queue": {"capacity": args.queue, "length": len(st.queue)},
                "limits": {"max_upload_mb": args.max_upload_mb, "max_pixels": args.max_pixels}})
        if parts == ["images"] and method == "POST":
            data = self.read_body(args.max_upload_mb * 1_000_000)
            pic = Picture(data, args.max_pixels)
            iid = secrets.token_hex(16)
            with st.lock:
                st.images[iid] = pic
            return self.send_json(200, {"id": iid, "width": pic.width, "height": pic.height})
        if len(parts) == 2 and parts[0] == "images" and method == "GET":
            pic = st.images.get(parts[1])
            if not pic:
                raise HttpError(404, f"no picture with id {parts[1]}")
            return self.send_body(200, pic.png, "image/png" if Image or pic.png[:4] == b"\x89PNG" else "application/octet-stream")
        if len(parts) == 2 and parts[0] == "files" and method == "GET":
            data = st.files.get(parts[1].removesuffix(".png"))
            if data is None:
                raise HttpError(404, f"no file {parts[1]}")
            return self.send_body(200, data, "image/png")
        if parts in (["masks"], ["edits"]) and method == "POST":
            body = self.read_json()
            params = parse_params(body)
            if parts == ["masks"] and "mask" in body:
                raise HttpError(400, "unknown parameter `mask`")
            if body["image"] not in st.images:
                raise HttpError(404, f"no picture with id {body['image']}")
            mask_id = body.get("mask")
            if mask_id is not None and mask_id not in st.images:
                raise HttpError(404, f"no mask picture with id {mask_id}")
            job = Job("mask" if parts == ["masks"] else "edit", body["image"], body["source"], body["target"],
                      params, mask_id)
            st.submit(job)
            return self.send_json(202, {"job": job.id})
        if len(parts) >= 2 and parts[0] == "jobs":
            job = st.jobs.get(parts[1])
            if not job:
                raise HttpError(404, f"no job with id {parts[1]}")
            if len(parts) == 2 and method == "GET":
                with st.lock:
                    return self.send_json(200, job.to_json(st))
            if len(parts) == 2 and method == "DELETE":
                with st.lock:
                    if job.status == "queued":
                        st.queue.remove(job)
                        job.status = job.stage = "cancelled"
                        st.changed(job)
                    elif job.status == "running":
                        job.cancel_requested = True
                    return self.send_json(200, job.to_json(st))
            if parts[2:] == ["events"] and method == "GET":
                if args.no_sse:
                    raise HttpError(503, "events are switched off (--no-sse)")
                return self.events(job)
        raise HttpError(404 if method == "GET" else 405, f"no such endpoint: {method} {path}")

    def events(self, job):
        st = self.server.state
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seen = -1
        while True:
            with st.lock:
                while job.version == seen:
                    st.lock.wait(15)
                    if job.version == seen:
                        break  # keep-alive below
                seen_now = job.version
                payload = json.dumps(job.to_json(st)) if seen_now != seen else None
                terminal = job.status in TERMINAL
            try:
                self.wfile.write((f"data: {payload}\n\n" if payload else ": keep-alive\n\n").encode())
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            seen = seen_now
            if terminal:
                return


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7861)
    ap.add_argument("--token")
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--tick-ms", type=float, default=60)
    ap.add_argument("--max-upload-mb", type=int, default=20)
    ap.add_argument("--max-pixels", type=int, default=50_000_000)
    ap.add_argument("--model-name", default="diffedit-shapes")
    ap.add_argument("--native-size", type=int, default=128)
    ap.add_argument("--no-sse", action="store_true", help="refuse event streams (the page must poll)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.args, server.state = args, State(args)
    print(f"listening on http://{args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
