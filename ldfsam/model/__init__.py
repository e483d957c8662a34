"""The LDFSAM network: ``build.build_model(cfg)``, ``trainable.configure_phase2(model)``, presets, SAM weights.

Nothing is imported here, so ``ldfsam.model.config`` stays importable without torch or ultralytics.
"""
