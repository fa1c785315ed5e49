"""Models: clipprobe's own open_clip architectures, loading from any source, the LightningModule."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_configs() -> None:
    """Register ``clipprobe/models/configs/*.json`` with open_clip (idempotent), so that
    ``open_clip.create_model_and_transforms("clipprobe-tiny")`` works."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
