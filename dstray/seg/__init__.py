"""The paper's second half: defect segmentation (Wei et al., §3.2 and §4), pure torch, no Ray.

- :mod:`.buttonlab`: Buttonlab (Fig. 4, Alg. 3); :mod:`.baselines`: DeepLab v3+ and U-Net
  behind the same builder; :mod:`.encoders`: their EfficientNet-Lite0 (default, ImageNet
  weights installed with dstray) and ResNet encoders, one ``imagenet|PATH|random`` choice;
- :mod:`.data`: windows cut at the images' own resolution, augmentation, the real +
  generated training source, the one batch-mixing rule, Buttonlab's crop;
- :mod:`.train`: the loss (weighted CE, eq. 7, + soft Dice), :class:`~.train.SegTrainer`, the one
  training loop (selection of the model and threshold on ``val``), history, checkpoints,
  the final ``test`` score, the in-process run;
- :mod:`.evaluate`: whole-image inference at native resolution, threshold choice, pixel / type /
  macro / image scores on a real split (eq. 8), Figure-7 overlays;
- :mod:`.metrics`: confusion counts, scores, macro mean, ROC AUC.
"""
