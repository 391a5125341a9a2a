"""The commands of ``lit-recipes``: one module per command, named after it.

This layer sits on top: it may import everything below (callbacks, module, datamodules, models);
nothing below imports it (``tests/test_layers.py``). ``lit_recipes.entry`` is the console script's
front door; :mod:`lit_recipes.commands.main` dispatches a command line to the module that runs it.
Importing this package imports nothing else (``lit-recipes --help`` stays fast).
"""
