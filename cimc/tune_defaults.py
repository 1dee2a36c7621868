"""Defaults of `cimc tune` (cimc.training, cimc.column_calibration), in a module of their own: the command line shows
them in its help, and building its parser must not import the trainer and every backend (each `cimc` run builds it)."""
DEFAULT_LR = 0.35          # device levels per full-scale sample (about the 0.004 chosen on the mCNN before)
DEFAULT_HOLDOUT = 0.2      # the last 20% of the tuning data
AFFINE_TARGETS = ("float", "ideal")   # what --method affine fits each column to
DEFAULT_AFFINE_TARGET = "float"       # the float network (ideal, the ideal quantised chip, was it until 2026-12-02)
