"""lit_recipes: the classic image-classification training tricks as tested Lightning parts."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
