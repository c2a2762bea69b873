"""merge-search: find merge methods and per-layer coefficients for fine-tunes of one base model.

Importing this package is light: torch is imported by the modules that need it, Ray and lm-eval only when a
run uses them.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
