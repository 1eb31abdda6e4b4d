"""A generated corpus of bad or odd image files, each with the answers the gateway may give it.

Everything is made here with Pillow or by hand (no committed binaries). ``CORPUS`` maps a kind to
``(bytes, content type, allowed statuses)``: 200 means "scored", a 4xx set means "refused in JSON";
several statuses mean either is right. Whatever the kind, never a 5xx, a dropped connection or a hang.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["CORPUS", "Case", "picture", "save"]

Case = tuple[bytes, str, frozenset[int]]

SCORED = frozenset({200})
REFUSED = frozenset({400})


def picture(width: int = 96, height: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx ^ yy) & 255], -1)
    return np.clip(base + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)


def save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgb(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(picture(width, height, seed))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` (valid CRCs) with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _png_bad_crc() -> bytes:
    data = bytearray(save(_rgb(), "PNG"))
    data[29] ^= 0xFF  # the IHDR chunk's CRC (8 signature + 4 length + 4 type + 13 data)
    return bytes(data)


def _bmp_huge_header() -> bytes:
    data = bytearray(save(_rgb(40, 40), "BMP"))
    struct.pack_into("<ii", data, 18, 200_000, 200_000)  # BITMAPINFOHEADER width, height
    return bytes(data)


def _gif_huge_screen() -> bytes:
    data = bytearray(save(_rgb(40, 40).convert("P"), "GIF"))
    struct.pack_into("<HH", data, 6, 65535, 65535)  # logical screen
    return bytes(data)


def _cmyk_jpeg() -> bytes:
    return save(_rgb(120, 90).convert("CMYK"), "JPEG", quality=90)


def _png16() -> bytes:
    return save(Image.fromarray(picture(80, 60)[..., 0].astype(np.uint16) * 257), "PNG")  # I;16


def _palette_alpha_png() -> bytes:
    image = _rgb(80, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return save(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [_rgb(64, 64, seed=s).convert("P") for s in range(3)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _multipage_tiff() -> bytes:
    pages = [_rgb(64, 48, seed=s) for s in range(3)]
    return save(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    return save(_rgb(120, 40), "JPEG", exif=exif.tobytes())


def _tiff_bad_ifd() -> bytes:
    data = bytearray(save(_rgb(40, 40), "TIFF"))
    struct.pack_into("<I", data, 4, 0x7FFFFFF0)  # first IFD offset far past the end
    return bytes(data)


def _png_text_bomb() -> bytes:
    image = _rgb(64, 64)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * 2_000_000, zip=True)  # compresses to a few KB
    return save(image, "PNG", pnginfo=info)


def _multipart(parts: list[tuple[str, str, bytes, str]], boundary: str = "hostileboundary") -> bytes:
    out = io.BytesIO()
    for field, filename, payload, ctype in parts:
        out.write(f"--{boundary}\r\n".encode())
        out.write(f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'.encode())
        out.write(f"Content-Type: {ctype}\r\n\r\n".encode())
        out.write(payload + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


_JPEG = save(_rgb(), "JPEG", quality=90)
_PNG = save(_rgb(), "PNG")
_MULTIPART = "multipart/form-data; boundary=hostileboundary"
_PDF = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n"
_HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
_ONE_PNG_PART = [("file", "a.png", _PNG, "image/png")]

_BUILDERS: dict[str, Callable[[], Case]] = {
    "zero_bytes": lambda: (b"", "image/jpeg", REFUSED),
    "truncated_jpeg": lambda: (_JPEG[: len(_JPEG) // 2], "image/jpeg", REFUSED),
    "truncated_png": lambda: (_PNG[: len(_PNG) // 2], "image/png", REFUSED),
    "jpeg_only_soi": lambda: (b"\xff\xd8", "image/jpeg", REFUSED),
    "png_signature_only": lambda: (b"\x89PNG\r\n\x1a\n", "image/png", REFUSED),
    "png_bad_crc": lambda: (_png_bad_crc(), "image/png", REFUSED),
    "png_declares_100000x100000": lambda: (_png_declaring(100_000, 100_000), "image/png", frozenset({413})),
    "png_declares_0x0": lambda: (_png_declaring(0, 0), "image/png", REFUSED),
    "gif_declares_65535x65535": lambda: (_gif_huge_screen(), "image/gif", frozenset({400, 413})),
    "bmp_declares_200000x200000": lambda: (_bmp_huge_header(), "image/bmp", frozenset({400, 413})),
    "png_1x1": lambda: (save(_rgb(1, 1), "PNG"), "image/png", frozenset({422})),
    "jpeg_31x400": lambda: (save(_rgb(31, 400), "JPEG"), "image/jpeg", frozenset({422})),
    "cmyk_jpeg": lambda: (_cmyk_jpeg(), "image/jpeg", SCORED),
    "progressive_jpeg": lambda: (save(_rgb(), "JPEG", progressive=True), "image/jpeg", SCORED),
    "png_16bit_I16": lambda: (_png16(), "image/png", SCORED),
    "tiff_16bit_I16": lambda: (save(Image.open(io.BytesIO(_png16())), "TIFF"), "image/tiff", SCORED),
    "tiff_float32_F": lambda: (
        save(Image.fromarray(picture()[..., 1].astype(np.float32) / 255), "TIFF"),
        "image/tiff",
        SCORED,
    ),
    "palette_png_with_alpha": lambda: (_palette_alpha_png(), "image/png", SCORED),
    "bilevel_png_mode_1": lambda: (save(_rgb().convert("1"), "PNG"), "image/png", SCORED),
    "grayscale_png_L": lambda: (save(_rgb().convert("L"), "PNG"), "image/png", SCORED),
    "grayscale_alpha_png_LA": lambda: (save(_rgb().convert("LA"), "PNG"), "image/png", SCORED),
    "animated_gif": lambda: (_animated_gif(), "image/gif", SCORED),
    "multipage_tiff": lambda: (_multipage_tiff(), "image/tiff", SCORED),
    "tiff_bad_ifd_offset": lambda: (_tiff_bad_ifd(), "image/tiff", REFUSED),
    "exif_rotated_jpeg": lambda: (_exif_rotated_jpeg(), "image/jpeg", SCORED),
    "webp_lossless": lambda: (save(_rgb(), "WEBP", lossless=True), "image/webp", SCORED),
    "webp_rgba": lambda: (save(_rgb().convert("RGBA"), "WEBP"), "image/webp", SCORED),
    "ico": lambda: (save(_rgb(64, 64), "ICO", sizes=[(64, 64)]), "image/x-icon", SCORED),
    "ppm": lambda: (save(_rgb(), "PPM"), "image/x-portable-pixmap", SCORED),
    "bmp": lambda: (save(_rgb(), "BMP"), "image/bmp", SCORED),
    "banner_32x4000": lambda: (save(_rgb(4000, 32), "PNG"), "image/png", SCORED),
    "png_text_chunk_bomb": lambda: (_png_text_bomb(), "image/png", REFUSED),  # Pillow MAX_TEXT_CHUNK
    "jpeg_then_zip_polyglot": lambda: (_JPEG + b"PK\x03\x04" + bytes(200), "image/jpeg", SCORED),
    "svg_text": lambda: (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100"><rect width="100"/></svg>',
        "image/svg+xml",
        REFUSED,
    ),
    "pdf_header": lambda: (_PDF, "image/jpeg", REFUSED),
    "html": lambda: (_HTML, "image/png", REFUSED),
    "random_bytes": lambda: (np.random.default_rng(3).bytes(4096), "application/octet-stream", REFUSED),
    "wrong_content_type_text": lambda: (_PNG, "text/plain", frozenset({415})),
    "wrong_content_type_json": lambda: (_PNG, "application/json", frozenset({415})),
    "multipart_empty": lambda: (b"--hostileboundary--\r\n", _MULTIPART, frozenset({400, 415})),
    "multipart_no_boundary": lambda: (_multipart(_ONE_PNG_PART), "multipart/form-data", REFUSED),
    "multipart_two_files": lambda: (
        _multipart([("file", "a.png", _PNG, "image/png"), ("file", "b.png", _PNG, "image/png")]),
        _MULTIPART,
        REFUSED,
    ),
    "multipart_text_part": lambda: (
        _multipart([("file", "a.txt", b"hello", "text/plain")]),
        _MULTIPART,
        frozenset({415}),
    ),
    "multipart_empty_file": lambda: (_multipart([("file", "a.png", b"", "image/png")]), _MULTIPART, REFUSED),
}

CORPUS: dict[str, Case] = {kind: build() for kind, build in _BUILDERS.items()}
