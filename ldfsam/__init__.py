"""LDFSAM: localization-distilled feature prompting SAM for tooth segmentation in dental CBCT.

The core package: model, data, trainers, inference, metrics and the ``ldfsam`` command.
It never imports Slicer, Qt or VTK, so it runs anywhere Python and PyTorch do.
"""

__version__ = "0.1.0"
