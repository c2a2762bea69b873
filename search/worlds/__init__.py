"""Worlds built on real models: a base, its fine-tunes, their skills and the tasks that score them."""
