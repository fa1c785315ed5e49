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


def create_random_model(model_name: str, **kwargs: object) -> object:
    """A randomly initialised open_clip model by architecture name (clipprobe's configs included).

    open_clip's "no pretrained weights loaded" warning is silenced: none are wanted here.

    Raises:
        clipprobe.errors.UserError: unknown architecture.
    """
    import logging

    import open_clip

    from clipprobe.errors import UserError

    register_configs()
    if model_name not in open_clip.list_models() and not model_name.startswith("hf-hub:"):
        raise UserError(f"unknown open_clip architecture '{model_name}'; choose one listed by 'clipprobe models'")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(model_name, **kwargs)
    finally:
        root.setLevel(level)
