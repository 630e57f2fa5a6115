"""Control images for the ControlNet: Canny edges (no weights) and estimated depth."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

# OpenCV's Canny hysteresis thresholds as the SDXL canny ControlNets were trained with.
CANNY_LOW = 100
CANNY_HIGH = 200


def canny(img: Image.Image) -> Image.Image:
    """Returns white Canny edges on black, as an RGB image of img's size."""
    gray = cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, CANNY_LOW, CANNY_HIGH)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


class DepthEstimator:
    """DepthEstimator wraps a transformers depth model and its image processor.

    The map is min-max normalised per image (near = bright), the convention of
    the SDXL depth ControlNets.
    """

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    @classmethod
    def from_folder(cls, folder: str, dtype: Any) -> DepthEstimator:
        """Loads a save_pretrained folder with local_files_only."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForDepthEstimation.from_pretrained(
            folder, local_files_only=True, dtype=dtype
        )
        return cls(model, processor)

    def prepare(self, device: Any, dtype: Any) -> None:
        """Moves the model to where the pipeline runs."""
        self.model.to(device)
        if self.model.dtype != dtype:
            self.model.to(dtype)
        self.model.eval().requires_grad_(False)

    def __call__(self, img: Image.Image) -> Image.Image:
        import torch

        inputs = self.processor(images=img.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            depth = self.model(pixel_values=pixels).predicted_depth
        depth = torch.nn.functional.interpolate(
            depth.unsqueeze(1).float(),
            size=(img.size[1], img.size[0]),
            mode="bicubic",
            align_corners=False,
        )[0, 0]
        lo, hi = depth.min(), depth.max()
        norm = (depth - lo) / (hi - lo) if hi > lo else torch.zeros_like(depth)
        arr = (norm * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.stack([arr] * 3, axis=-1), "RGB")
