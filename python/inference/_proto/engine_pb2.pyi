from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_REASON_UNSPECIFIED: _ClassVar[FailureReason]
    FAILURE_REASON_BAD_IMAGE: _ClassVar[FailureReason]
    FAILURE_REASON_IMAGE_TOO_LARGE: _ClassVar[FailureReason]
    FAILURE_REASON_MASK_SIZE_MISMATCH: _ClassVar[FailureReason]
    FAILURE_REASON_OUT_OF_RANGE: _ClassVar[FailureReason]
    FAILURE_REASON_UNSUPPORTED_FORMAT: _ClassVar[FailureReason]
    FAILURE_REASON_CONTROL_UNAVAILABLE: _ClassVar[FailureReason]
    FAILURE_REASON_OOM: _ClassVar[FailureReason]
    FAILURE_REASON_CANCELLED: _ClassVar[FailureReason]
    FAILURE_REASON_DEADLINE: _ClassVar[FailureReason]
    FAILURE_REASON_NOT_READY: _ClassVar[FailureReason]
    FAILURE_REASON_INTERNAL: _ClassVar[FailureReason]
    FAILURE_REASON_CONTENT_REJECTED: _ClassVar[FailureReason]

class ContentPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTENT_POLICY_UNSPECIFIED: _ClassVar[ContentPolicy]
    CONTENT_POLICY_OFF: _ClassVar[ContentPolicy]
    CONTENT_POLICY_WARN: _ClassVar[ContentPolicy]
    CONTENT_POLICY_REJECT: _ClassVar[ContentPolicy]

class ControlKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTROL_KIND_UNSPECIFIED: _ClassVar[ControlKind]
    CONTROL_KIND_CANNY: _ClassVar[ControlKind]
    CONTROL_KIND_DEPTH: _ClassVar[ControlKind]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
FAILURE_REASON_UNSPECIFIED: FailureReason
FAILURE_REASON_BAD_IMAGE: FailureReason
FAILURE_REASON_IMAGE_TOO_LARGE: FailureReason
FAILURE_REASON_MASK_SIZE_MISMATCH: FailureReason
FAILURE_REASON_OUT_OF_RANGE: FailureReason
FAILURE_REASON_UNSUPPORTED_FORMAT: FailureReason
FAILURE_REASON_CONTROL_UNAVAILABLE: FailureReason
FAILURE_REASON_OOM: FailureReason
FAILURE_REASON_CANCELLED: FailureReason
FAILURE_REASON_DEADLINE: FailureReason
FAILURE_REASON_NOT_READY: FailureReason
FAILURE_REASON_INTERNAL: FailureReason
FAILURE_REASON_CONTENT_REJECTED: FailureReason
CONTENT_POLICY_UNSPECIFIED: ContentPolicy
CONTENT_POLICY_OFF: ContentPolicy
CONTENT_POLICY_WARN: ContentPolicy
CONTENT_POLICY_REJECT: ContentPolicy
CONTROL_KIND_UNSPECIFIED: ControlKind
CONTROL_KIND_CANNY: ControlKind
CONTROL_KIND_DEPTH: ControlKind
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat

class StageRequest(_message.Message):
    __slots__ = ("job_id", "image", "mask", "prompt", "negative_prompt", "seed", "strength", "guidance_scale", "steps", "control", "conditioning_scale", "output_long_side", "output_format", "quality", "upscale_long_side", "content_policy", "structure_min", "structure_retries")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_SCALE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_POLICY_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_MIN_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_RETRIES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image: bytes
    mask: bytes
    prompt: str
    negative_prompt: str
    seed: int
    strength: float
    guidance_scale: float
    steps: int
    control: ControlKind
    conditioning_scale: float
    output_long_side: int
    output_format: ImageFormat
    quality: int
    upscale_long_side: int
    content_policy: ContentPolicy
    structure_min: float
    structure_retries: int
    def __init__(self, job_id: _Optional[str] = ..., image: _Optional[bytes] = ..., mask: _Optional[bytes] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., seed: _Optional[int] = ..., strength: _Optional[float] = ..., guidance_scale: _Optional[float] = ..., steps: _Optional[int] = ..., control: _Optional[_Union[ControlKind, str]] = ..., conditioning_scale: _Optional[float] = ..., output_long_side: _Optional[int] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ..., upscale_long_side: _Optional[int] = ..., content_policy: _Optional[_Union[ContentPolicy, str]] = ..., structure_min: _Optional[float] = ..., structure_retries: _Optional[int] = ...) -> None: ...

class StageEvent(_message.Message):
    __slots__ = ("accepted", "progress", "result")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    progress: Progress
    result: Result
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("job_id", "queue_ms", "width", "height")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    queue_ms: float
    width: int
    height: int
    def __init__(self, job_id: _Optional[str] = ..., queue_ms: _Optional[float] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    step: int
    total: int
    def __init__(self, step: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "preprocess_ms", "denoise_ms", "vae_decode_ms", "encode_ms", "total_ms", "upscale_ms", "content_check_ms", "structure_check_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    DENOISE_MS_FIELD_NUMBER: _ClassVar[int]
    VAE_DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    ENCODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    UPSCALE_MS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_CHECK_MS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_CHECK_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    preprocess_ms: float
    denoise_ms: float
    vae_decode_ms: float
    encode_ms: float
    total_ms: float
    upscale_ms: float
    content_check_ms: float
    structure_check_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., denoise_ms: _Optional[float] = ..., vae_decode_ms: _Optional[float] = ..., encode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., upscale_ms: _Optional[float] = ..., content_check_ms: _Optional[float] = ..., structure_check_ms: _Optional[float] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("image", "width", "height", "format", "model_rev", "seed", "timings", "peak_gpu_memory_bytes", "warnings", "structure_score", "attempts")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MODEL_REV_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    PEAK_GPU_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    STRUCTURE_SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    width: int
    height: int
    format: ImageFormat
    model_rev: str
    seed: int
    timings: Timings
    peak_gpu_memory_bytes: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    structure_score: float
    attempts: int
    def __init__(self, image: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[ImageFormat, str]] = ..., model_rev: _Optional[str] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., peak_gpu_memory_bytes: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., structure_score: _Optional[float] = ..., attempts: _Optional[int] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Limits(_message.Message):
    __slots__ = ("min_long_side", "max_long_side", "default_long_side", "max_steps", "max_input_pixels", "max_message_bytes", "concurrency", "max_upscale_long_side", "max_structure_retries")
    MIN_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSCALE_LONG_SIDE_FIELD_NUMBER: _ClassVar[int]
    MAX_STRUCTURE_RETRIES_FIELD_NUMBER: _ClassVar[int]
    min_long_side: int
    max_long_side: int
    default_long_side: int
    max_steps: int
    max_input_pixels: int
    max_message_bytes: int
    concurrency: int
    max_upscale_long_side: int
    max_structure_retries: int
    def __init__(self, min_long_side: _Optional[int] = ..., max_long_side: _Optional[int] = ..., default_long_side: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_input_pixels: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., concurrency: _Optional[int] = ..., max_upscale_long_side: _Optional[int] = ..., max_structure_retries: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_rev", "backend", "device", "dtype", "versions", "limits", "control_kinds", "ready")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_REV_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_KINDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    model_rev: str
    backend: str
    device: str
    dtype: str
    versions: _containers.ScalarMap[str, str]
    limits: Limits
    control_kinds: _containers.RepeatedScalarFieldContainer[ControlKind]
    ready: bool
    def __init__(self, model_rev: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., versions: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., control_kinds: _Optional[_Iterable[_Union[ControlKind, str]]] = ..., ready: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("outcome",)
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[CancelResponse.Outcome]
        OUTCOME_STOPPED: _ClassVar[CancelResponse.Outcome]
        OUTCOME_UNKNOWN: _ClassVar[CancelResponse.Outcome]
    OUTCOME_UNSPECIFIED: CancelResponse.Outcome
    OUTCOME_STOPPED: CancelResponse.Outcome
    OUTCOME_UNKNOWN: CancelResponse.Outcome
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: CancelResponse.Outcome
    def __init__(self, outcome: _Optional[_Union[CancelResponse.Outcome, str]] = ...) -> None: ...
