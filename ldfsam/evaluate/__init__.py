"""Evaluation: Dice, IoU, HD, HD95, ASSD, surface overlap and accuracy, with bootstrap confidence intervals.

Entry points: :func:`ldfsam.evaluate.metrics.pair_metrics`, :func:`ldfsam.evaluate.folders.evaluate_folders`,
:func:`ldfsam.evaluate.model_eval.evaluate_model`; the command is ``ldfsam evaluate``.
"""
