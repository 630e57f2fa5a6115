"""vstage engine: SDXL + ControlNet img2img and inpainting served over a Unix socket.

The engine owns the accelerator and nothing else. It receives image bytes and
model parameters over gRPC and returns image bytes; it holds no credentials,
opens no network connection and knows nothing about what the prompts mean.
"""
