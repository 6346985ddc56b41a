"""raylam: latent action learning from distractor-heavy video, on Ray."""
__version__ = "0.1.0"
