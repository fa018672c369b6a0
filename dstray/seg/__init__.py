"""The paper's second half: defect segmentation (Wei et al., §3.2 and §4), pure torch, no Ray.

- :mod:`.buttonlab`: Buttonlab (Fig. 4, Alg. 3); :mod:`.baselines`: DeepLab v3+ and U-Net
  behind the same builder; :mod:`.encoders`: their ResNet encoders and pretrained weights;
- :mod:`.data`: letterbox, joint augmentation, the real + generated training source and
  the one batch-mixing rule;
- :mod:`.train`: the masked loss (eq. 7), :class:`~.train.SegTrainer`, the one training loop,
  the history, checkpoints, the in-process run;
- :mod:`.evaluate`: pixel / type / image scores on a real split (eq. 8), Figure-7 overlays;
- :mod:`.metrics`: confusion counts and scores.
"""
