"""Whisper and CLIP graphs (registered into the ONNX builder and the weight layouts)."""

from __future__ import annotations

FAMILIES: dict = {}
SPECS: dict = {}
