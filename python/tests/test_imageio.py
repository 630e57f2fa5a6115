from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference import errors, imageio
from inference._proto import engine_pb2 as pb


@pytest.mark.parametrize(
    ("size", "long_side", "want"),
    [
        ((1600, 1200), 1024, (1024, 768)),
        ((1200, 1600), 1024, (768, 1024)),
        ((1000, 1000), 768, (768, 768)),
        ((1920, 1080), 768, (768, 432)),
        ((4000, 10), 1024, (1024, 8)),
        ((333, 517), 1024, (656, 1024)),
    ],
)
def test_target_size(size: tuple[int, int], long_side: int, want: tuple[int, int]) -> None:
    got = imageio.target_size(*size, long_side)
    assert got == want
    assert max(got) == long_side and got[0] % 8 == 0 and got[1] % 8 == 0
    # Aspect kept to within the rounding to 8 px.
    assert abs(got[0] / got[1] - size[0] / size[1]) <= 8 / min(got) * (size[0] / size[1]) + 1e-9


def _jpeg_with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_exif_orientation_applied() -> None:
    img = Image.new("RGB", (60, 20), (250, 0, 0))
    img.paste((0, 0, 250), (0, 0, 10, 20))  # blue strip on the left
    decoded = imageio.decode(_jpeg_with_orientation(img, 6), 10_000)
    # Orientation 6: rotate 90 degrees clockwise for display; the left strip goes on top.
    assert decoded.size == (20, 60)
    top = np.asarray(decoded)[2, 10]
    bottom = np.asarray(decoded)[57, 10]
    assert top[2] > 200 and top[0] < 50
    assert bottom[0] > 200 and bottom[2] < 50


def test_decode_rejects() -> None:
    with pytest.raises(errors.EngineError) as info:
        imageio.decode(b"\x89PNG\r\n\x1a\n" + b"\0" * 30, 10_000)
    assert info.value.reason == pb.FAILURE_REASON_BAD_IMAGE
    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, "BMP")
    with pytest.raises(errors.EngineError) as info:
        imageio.decode(buf.getvalue(), 100_000)
    assert info.value.reason == pb.FAILURE_REASON_BAD_IMAGE
    buf = io.BytesIO()
    Image.new("RGB", (200, 200)).save(buf, "PNG")
    with pytest.raises(errors.EngineError) as info:
        imageio.decode(buf.getvalue(), 39_999)
    assert info.value.reason == pb.FAILURE_REASON_IMAGE_TOO_LARGE


def test_transparency_flattened_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(imageio.as_rgb(rgba)).min() == 255


def test_composite_bounds() -> None:
    size = (64, 48)
    original = Image.new("RGB", size, (10, 20, 30))
    generated = Image.new("RGB", size, (200, 150, 100))
    mask = Image.new("L", size, 0)
    mask.paste(255, (20, 10, 40, 30))
    feather = 3
    out = np.asarray(imageio.composite(original, generated, mask, feather)).astype(int)
    inside = out[10:30, 20:40]
    assert (inside == [200, 150, 100]).all()
    far = np.ones(size[::-1], bool)
    far[
        10 - 2 * feather - 1 : 30 + 2 * feather + 1, 20 - 2 * feather - 1 : 40 + 2 * feather + 1
    ] = False
    assert (out[far] == [10, 20, 30]).all()
    # A soft edge: values strictly between the two just outside the mask.
    edge = out[20, 40 + feather]
    assert 10 < edge[0] < 200


def test_encode_strips_metadata() -> None:
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    for fmt, name in (("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
        data = imageio.encode(img, fmt, 90)
        back = Image.open(io.BytesIO(data))
        assert back.format == name
        assert not back.getexif()
        assert "icc_profile" not in back.info
