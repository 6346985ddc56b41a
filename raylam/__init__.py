"""raylam: latent action learning from distractor-heavy video, on Ray."""

__version__ = "0.1.0"


def load(path: str, device: str = "cpu"):
    """A model written by ``raylam export`` (safetensors + config.json), without Ray: see raylam.export."""
    from raylam.export import load as _load

    return _load(path, device)
