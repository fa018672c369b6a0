"""Helpers shared by the tests (test-only code lives here, not in the package)."""

from dstray.config import DSTConfig

# small and fast DST fit: 48-px windows, 2 backgrounds a step (the defaults are 96 and 4)
FAST_DST = DSTConfig(defect_type="blowhole", loss_weights="random", batch_size=2, patch_size=48, lr=2e-3, steps=30,
                     log_every=10, checkpoint_every=20, seed=0, device="cpu")
