"""The paper's first half: Defect Style Transfer (Wei et al., §3.1, Alg. 2), pure torch, no Ray.

- :mod:`.histmatch`: masked histogram matching (Alg. 2 step 1; the histogram loss's target);
- :mod:`.areas`: the target areas L, drawn from the type's reference masks;
- :mod:`.transfer_net`: TransferNet (Fig. 2) and the Gaussian-mask fusion;
- :mod:`.loss_net`, :mod:`.losses`: the frozen VGG-19 and the four masked losses (eq. 3-6);
- :mod:`.fit`: :class:`~.fit.DSTFitter`, the one fitting loop, the in-process fit;
- :mod:`.stylize`: a fitted model applied to a background (Alg. 2 at inference);
- :mod:`.synth`: generation: the plan, the generators (dst, histmatch, copy), Parquet shards;
- :mod:`.figures`: the paper's Figure 3 row.
"""
