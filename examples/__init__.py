"""Examples of bringing your own model and data, by import path: ``--model examples.resnet8:resnet8``.

Run from the repository root: the current directory goes first on ``sys.path``, so this folder is found
before any installed package named ``examples``.
"""
