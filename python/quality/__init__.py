"""Automatic image-quality metrics for staged rooms: structure fidelity, preservation
outside the repaint mask, exposure and colour artifacts, and a CLIP text-image score.

Only numpy and OpenCV are needed to import it; torch is loaded by `clip_score` alone.
"""
