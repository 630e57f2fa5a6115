"""Output size buckets: parsing, the standard set and snapping."""

from __future__ import annotations

import pytest

from inference import buckets


def test_empty_means_no_buckets_and_sizes_pass_through() -> None:
    assert buckets.parse("", 1024) == ()
    assert buckets.snap((1024, 680), ()) == (1024, 680)


def test_standard_set_at_1024() -> None:
    assert buckets.parse(" Standard ", 1024) == (
        (1024, 1024),
        (1024, 768),
        (768, 1024),
        (1024, 704),
        (704, 1024),
        (1024, 576),
        (576, 1024),
    )
    assert all(side % 64 == 0 for size in buckets.standard(768) for side in size)


def test_list_is_parsed_in_order_without_repeats() -> None:
    assert buckets.parse("1024x768, 768x1024,1024x768", 1024) == ((1024, 768), (768, 1024))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1024x700", "multiples of 64"),
        ("1024", "WIDTHxHEIGHT"),
        ("1024x768x2", "WIDTHxHEIGHT"),
        ("axb", "WIDTHxHEIGHT"),
        ("0x0", "multiples of 64"),
    ],
)
def test_bad_lists(text: str, needle: str) -> None:
    with pytest.raises(buckets.BucketError) as info:
        buckets.parse(text, 1024)
    assert needle in str(info.value)


def test_standard_needs_a_long_side_multiple_of_64() -> None:
    with pytest.raises(buckets.BucketError):
        buckets.standard(1000)


@pytest.mark.parametrize(
    ("size", "want"),
    [
        ((1024, 1024), (1024, 1024)),
        ((1024, 680), (1024, 704)),  # 3:2 photo
        ((1024, 768), (1024, 768)),
        ((680, 1024), (704, 1024)),
        ((1024, 576), (1024, 576)),
        ((1024, 456), (1024, 576)),  # wider than any bucket: the widest
        ((1024, 736), (1024, 768)),  # ln(1024/736) is nearer 4:3 than 3:2
    ],
)
def test_snap_picks_the_nearest_aspect(size: tuple[int, int], want: tuple[int, int]) -> None:
    assert buckets.snap(size, buckets.standard(1024)) == want


def test_snap_prefers_the_nearest_long_side() -> None:
    sizes = buckets.parse("768x576,1024x1024,1024x768", 1024)
    assert buckets.snap((768, 512), sizes) == (768, 576)
    assert buckets.snap((1024, 680), sizes) == (1024, 768)
    assert buckets.snap((904, 904), sizes) == (1024, 1024)
