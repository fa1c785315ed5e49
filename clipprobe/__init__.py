"""clipprobe: train small CLIP models and probe their multi-object biases as they emerge."""

__version__ = "0.1.0"
