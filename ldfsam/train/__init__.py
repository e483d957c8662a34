"""``ldfsam train``: the whole training (prepare, Phase 1, Phase 2, evaluation) in one run folder, and its report."""
