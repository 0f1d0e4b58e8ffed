"""Global baselines: per-key sketches (``store``) and the analysis consumer that feeds them (``consumer``)."""
