"""The content policy and the structure check: the detector on a real photo of a
person and on the project's empty rooms, the one structure score shared with the
quality loop, and both checks through the server with the test engine."""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import skimage.data
from PIL import Image

from helpers import SMALL_LIMITS, Engine, decode, job_spec, png, reason_of, request, start_test
from inference import checks, content, imageio
from inference._proto import engine_pb2 as pb
from inference.jobs import JobContext, Output, Work
from quality import metrics

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "quality" / "sets" / "bundled"
ROOMS = [*sorted(BUNDLED.glob("*.jpg")), ROOT / "internal" / "sample" / "empty_living_room.jpg"]
# The Go tests' copy of the astronaut (512 px JPEG), checked against skimage's below.
ASTRONAUT_JPEG = ROOT / "internal" / "app" / "testdata" / "astronaut.jpg"

# The test engine's outputs are at most 256 px (SMALL_LIMITS).
SIDE = 256


def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def room_png(path: Path = BUNDLED / "sunny-living-room.jpg") -> bytes:
    with Image.open(path) as img:
        return png(img.convert("RGB"))


# The detector.


@pytest.mark.parametrize("side", [512, 256, 1024])
def test_astronaut_is_detected(side: int) -> None:
    found = content.detector().detect(astronaut().resize((side, side)))
    assert found.found
    assert found.faces >= 1


def test_go_fixture_is_the_astronaut() -> None:
    with Image.open(ASTRONAUT_JPEG) as img:
        fixture = np.asarray(img.convert("RGB")).astype(int)
    original = np.asarray(astronaut()).astype(int)
    assert fixture.shape == original.shape
    # JPEG's loss only: the same photo.
    assert np.abs(fixture - original).mean() < 4
    assert content.detector().detect(Image.open(ASTRONAUT_JPEG)).found


@pytest.mark.parametrize("path", ROOMS, ids=lambda p: p.stem)
def test_empty_rooms_are_not_flagged(path: Path) -> None:
    with Image.open(path) as img:
        img.load()
        det = content.detector()
        assert det.detect(img) == content.Detections()
        # The test engine's size, where detection sees a smaller copy.
        small = imageio.resize(img.convert("RGB"), imageio.target_size(*img.size, SIDE))
        assert det.detect(small) == content.Detections()


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (127, 127), (8, 8), (1, 1)])
def test_images_smaller_than_a_detector_window(size: tuple[int, int]) -> None:
    # OpenCV's HOG kills the process on an image below its 64x128 window.
    assert content.detector().detect(astronaut().resize(size)).people == 0


def test_detector_is_loaded_once() -> None:
    assert content.detector() is content.detector()


def test_detection_is_deterministic() -> None:
    img = astronaut()
    assert content.detector().detect(img) == content.detector().detect(img)


# The one structure score.


def test_engine_uses_the_quality_loops_score() -> None:
    assert checks.structure_score is metrics.structure_score


@pytest.mark.parametrize("path", ROOMS[:6], ids=lambda p: p.stem)
def test_structure_score_is_compute_edge_recall(path: Path) -> None:
    with Image.open(path) as img:
        original = np.asarray(img.convert("RGB"))
    mask_path = path.with_name(path.stem + "-mask.png")
    mask = np.asarray(Image.open(mask_path).convert("L")) if mask_path.exists() else None
    for staged in (255 - original, np.roll(original, (20, 20), axis=(0, 1))):
        expected = metrics.compute(original, staged, mask)["edge_recall"]
        assert metrics.structure_score(original, staged, mask) == expected


def test_structure_score_without_room_to_judge_is_nan() -> None:
    with Image.open(ROOMS[0]) as img:
        original = np.asarray(img.convert("RGB"))
    everything = np.full(original.shape[:2], 255, np.uint8)
    assert math.isnan(metrics.structure_score(original, original, everything))


# Through the server with the test engine.


def checked(image: bytes, **kw: object) -> pb.StageRequest:
    return request(image, output_long_side=SIDE, **kw)


@pytest.mark.parametrize("policy", [pb.CONTENT_POLICY_UNSPECIFIED, pb.CONTENT_POLICY_OFF])
def test_policy_off_runs_no_detection(test_engine: Engine, policy: int) -> None:
    result = test_engine.result(checked(jpeg(astronaut()), content_policy=policy))
    assert list(result.warnings) == []
    assert result.timings.content_check_ms == 0
    assert not result.HasField("structure_score") and result.attempts == 1


def test_policy_warn_on_a_person(test_engine: Engine) -> None:
    result = test_engine.result(checked(jpeg(astronaut()), content_policy=pb.CONTENT_POLICY_WARN))
    assert list(result.warnings) == ["people_detected"]
    assert result.timings.content_check_ms > 0
    assert decode(result.image).size == (SIDE, SIDE)


def test_policy_reject_on_a_person_stops_before_denoising(test_engine: Engine) -> None:
    req = checked(jpeg(astronaut()), content_policy=pb.CONTENT_POLICY_REJECT, job_id="reject-1")
    events = []
    with pytest.raises(grpc.RpcError) as info:
        for event in test_engine.stub.Stage(req, timeout=60):
            events.append(event)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(info.value) == pb.FAILURE_REASON_CONTENT_REJECTED
    assert "people" in (info.value.details() or "")
    # Accepted, then the refusal: no denoising step ran.
    assert [e.WhichOneof("event") for e in events] == ["accepted"]
    line = next(x for x in test_engine.logs().splitlines() if "reject-1" in x and "content" in x)
    assert '"decision": "reject"' in line or '"decision":"reject"' in line


@pytest.mark.parametrize("path", ROOMS[::4], ids=lambda p: p.stem)
def test_policy_reject_passes_empty_rooms(test_engine: Engine, path: Path) -> None:
    result = test_engine.result(checked(room_png(path), content_policy=pb.CONTENT_POLICY_REJECT))
    assert list(result.warnings) == []
    assert result.timings.content_check_ms > 0


def test_structure_check_passes_an_unmoved_room(test_engine: Engine) -> None:
    # The test engine inverts: every edge stays where it was.
    result = test_engine.result(checked(room_png(), structure_min=0.5))
    assert list(result.warnings) == []
    assert result.HasField("structure_score") and result.structure_score > 0.99
    assert result.attempts == 1 and result.seed == 1
    assert result.timings.structure_check_ms > 0


def test_shifted_output_fails_the_structure_check(test_engine: Engine) -> None:
    image = room_png()
    result = test_engine.result(checked(image, structure_min=0.5), faults="shift=32")
    assert list(result.warnings) == ["structure_check_failed"]
    assert result.HasField("structure_score") and result.structure_score < 0.5
    assert result.attempts == 1 and result.seed == 1
    # The score is the quality loop's, of the input as the engine resized it.
    source = decode(image)
    resized = imageio.resize(source, imageio.target_size(*source.size, SIDE))
    expected = metrics.structure_score(np.asarray(resized), np.asarray(decode(result.image)))
    assert result.structure_score == pytest.approx(expected, abs=1e-6)


def test_retry_with_the_next_seed_passes(test_engine: Engine) -> None:
    req = checked(room_png(), structure_min=0.5, structure_retries=2, seed=41)
    result = test_engine.result(req, faults="shift=32,shift_renders=1")
    assert list(result.warnings) == []
    assert result.attempts == 2 and result.seed == 42
    assert result.structure_score > 0.99
    assert result.timings.denoise_ms > 0


def test_all_retries_failing_answers_the_best_with_the_warning(test_engine: Engine) -> None:
    both = "people_detected", "structure_check_failed"
    req = checked(
        jpeg(astronaut()),
        structure_min=0.99,
        structure_retries=2,
        seed=7,
        content_policy=pb.CONTENT_POLICY_WARN,
    )
    first = test_engine.result(req, faults="shift=24")
    assert tuple(first.warnings) == both
    assert first.attempts == 3
    # Every render is the same shift, so the first of equals is answered.
    assert first.seed == 7 and first.structure_score < 0.99
    again = test_engine.result(req, faults="shift=24")
    assert again.image == first.image and again.seed == first.seed


def test_retries_are_ignored_without_a_minimum(test_engine: Engine) -> None:
    result = test_engine.result(checked(room_png(), structure_retries=3), faults="shift=32")
    assert list(result.warnings) == [] and result.attempts == 1
    assert not result.HasField("structure_score")


@pytest.mark.parametrize(
    "change",
    [
        {"structure_min": 1.5},
        {"structure_min": -0.1},
        {"structure_min": float("nan")},
        {"structure_retries": 4, "structure_min": 0.5},
        {"content_policy": 9},
    ],
)
def test_bad_check_fields_are_refused(test_engine: Engine, change: dict[str, object]) -> None:
    with pytest.raises(grpc.RpcError) as info:
        test_engine.result(checked(room_png(), **change))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == pb.FAILURE_REASON_OUT_OF_RANGE


def test_limits_name_the_retry_bound(test_engine: Engine) -> None:
    assert test_engine.stub.Info(pb.InfoRequest()).limits.max_structure_retries == 3


def test_cancel_between_renders(test_engine: Engine) -> None:
    req = checked(
        room_png(), structure_min=0.5, structure_retries=3, steps=4, job_id="retry-cancel"
    )
    # Each render sleeps 1 s; a 1.5 s deadline ends the job during its second.
    with pytest.raises(grpc.RpcError) as info:
        test_engine.result(req, timeout=1.5, faults="shift=32,sleep=1")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_job_faults_apply_to_calls_without_their_own() -> None:
    engine = start_test(["--concurrency", "1", *SMALL_LIMITS, "--job-faults", "shift=32"])
    try:
        req = checked(room_png(), structure_min=0.5)
        assert list(engine.result(req).warnings) == ["structure_check_failed"]
        # A call's own commands win: here, a harmless sleep and no shift.
        assert list(engine.result(req, faults="sleep=0").warnings) == []
    finally:
        engine.close()


def test_the_peak_memory_is_the_highest_renders() -> None:
    # Three renders of noise against a room, all below a minimum of 1; the
    # best one answers, but the job held the most memory on the second.
    with Image.open(BUNDLED / "sunny-living-room.jpg") as img:
        room = img.convert("RGB").resize((128, 96))
    work = Work(spec=job_spec(structure_min=1.0, structure_retries=2), image=room, mask=None)
    peaks = iter([5, 9, 3])
    rng = np.random.default_rng(0)

    def render(_: Work) -> Output:
        noise = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
        return Output(image=noise, peak_gpu_memory_bytes=next(peaks))

    ctx = JobContext(threading.Event(), lambda: pb.FAILURE_REASON_CANCELLED, lambda s, t: None)
    rendered = checks.render_checked(work, ctx, render)
    assert rendered.attempts == 3 and rendered.warnings == ["structure_check_failed"]
    assert rendered.output.peak_gpu_memory_bytes == 9
