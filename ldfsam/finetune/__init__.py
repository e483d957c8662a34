"""Phase 2: segmentation fine-tuning of SAM with feature prompts (resumable, one process or many).

Entry point: :func:`ldfsam.finetune.run.finetune`; the command is ``ldfsam finetune``.
"""
