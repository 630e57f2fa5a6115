"""Image decoding, sizing, inpaint compositing and encoding (Pillow and NumPy, no torch)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from . import errors
from ._proto import engine_pb2 as pb

# Formats the engine decodes: the ones the sidecar lets through.
INPUT_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})

# Names as Pillow's save() knows them.
OUTPUT_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def decode(data: bytes, max_pixels: int, what: str = "image") -> Image.Image:
    """Decodes JPEG, PNG or WebP bytes, applying EXIF orientation.

    The pixel cap is checked on the header, before any pixel is decompressed,
    so an oversized (or crafted) file costs nothing.
    """
    if not data:
        raise errors.invalid(pb.FAILURE_REASON_BAD_IMAGE, f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in INPUT_FORMATS:
                raise errors.invalid(
                    pb.FAILURE_REASON_BAD_IMAGE,
                    f"{what} must be JPEG, PNG or WebP, got {img.format}",
                )
            width, height = img.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise errors.invalid(
                    pb.FAILURE_REASON_IMAGE_TOO_LARGE,
                    f"{what} is {width}x{height}; at most {max_pixels} pixels are allowed",
                )
            img.load()
            upright = ImageOps.exif_transpose(img)
    except errors.EngineError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise errors.invalid(
            pb.FAILURE_REASON_IMAGE_TOO_LARGE, f"{what} has too many pixels"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        raise errors.invalid(
            pb.FAILURE_REASON_BAD_IMAGE, f"{what} is not a readable image"
        ) from None
    return upright


def as_rgb(img: Image.Image) -> Image.Image:
    """Returns img as RGB; transparency is flattened onto white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def target_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Returns the output size: the long side equal to long_side, aspect kept,
    both sides rounded to multiples of 8 (at least 8)."""
    if long_side % 8:
        raise ValueError("long_side must be a multiple of 8")
    if width >= height:
        short = height * long_side / width
        return long_side, max(8, round(short / 8) * 8)
    short = width * long_side / height
    return max(8, round(short / 8) * 8), long_side


def resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resizes an RGB image with a high-quality filter."""
    if img.size == size:
        return img.copy()
    return img.resize(size, Image.Resampling.LANCZOS)


def resize_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Returns the mask as binary L (255 = repaint) at size."""
    gray = mask.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return gray.point(lambda v: 255 if v >= 128 else 0)


def blend_weights(mask: Image.Image, feather: int) -> np.ndarray:
    """Returns per-pixel weights of the generated image, in [0, 1].

    The mask is grown by feather pixels and then box-blurred by feather pixels,
    so the weight is exactly 1 everywhere inside the mask and exactly 0 farther
    than 2*feather pixels outside it: the seam is soft and everything beyond
    it stays the original, bit for bit.
    """
    if feather > 0:
        grown = mask.filter(ImageFilter.MaxFilter(2 * feather + 1))
        soft = grown.filter(ImageFilter.BoxBlur(feather))
    else:
        soft = mask
    weights = np.asarray(soft, dtype=np.float32) / 255.0
    # The blur must not eat into the mask itself.
    weights[np.asarray(mask) >= 128] = 1.0
    return weights


def composite(
    original: Image.Image, generated: Image.Image, mask: Image.Image, feather: int
) -> Image.Image:
    """Pastes generated over original where mask is white, with a feathered edge."""
    if original.size != generated.size or original.size != mask.size:
        raise ValueError("composite needs images of one size")
    w = blend_weights(mask, feather)[..., None]
    base = np.asarray(original, dtype=np.float32)
    gen = np.asarray(generated, dtype=np.float32)
    out = base * (1.0 - w) + gen * w
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    """Encodes img without metadata. fmt is jpeg, png or webp; quality 1..100."""
    # A fresh image carries no EXIF, ICC or text chunks from the input.
    clean = Image.frombytes("RGB", img.size, img.convert("RGB").tobytes())
    buf = io.BytesIO()
    if fmt == "jpeg":
        clean.save(buf, "JPEG", quality=quality, optimize=False, progressive=False)
    elif fmt == "webp":
        clean.save(buf, "WEBP", quality=quality, method=4)
    elif fmt == "png":
        clean.save(buf, "PNG", compress_level=6)
    else:
        raise ValueError(f"unknown format {fmt}")
    return buf.getvalue()
