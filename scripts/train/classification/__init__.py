"""Transfer learning for the classifier: data, strategies, training loop, report.

`cli.py` (`python -m scripts train-classifier`) is the command line; `train.run` is
the one function it calls. Needs the `export` extra (torch, torchvision, onnx, tqdm,
matplotlib); the service never imports this package.
"""


class FinetuneError(ValueError):
    """A problem the user can fix (data folder, weights, settings): the command line prints
    its message without a traceback."""
