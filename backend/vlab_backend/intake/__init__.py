"""Model intake: recognise, check and describe an uploaded model before anything is stored."""

from __future__ import annotations

from vlab_backend.intake.inspect import ModelInfo, ModelRejected, inspect_model

__all__ = ["ModelInfo", "ModelRejected", "inspect_model"]
