"""Callbacks: one per module, installed as ``lit_recipes.callbacks``."""
