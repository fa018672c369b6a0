"""Search spaces of ``dstray tune``: the ``--space KEY=SPEC`` syntax and its Ray Tune domains.

Importing this module needs no Ray (the CLI reads :data:`SPACE_HELP` for its help);
:func:`to_domain`, which :func:`parse_space` uses to check each spec, imports ``ray.tune``.
"""

from __future__ import annotations

from dataclasses import fields

from dstray.config import SegConfig, field_default, parse_value

# The default search space: name -> spec (the ``--space`` syntax, see parse_space). The values that
# matter for a rare defect class at native resolution: the defect weight (up to 20), the loss (dice_weight
# 0 = cross-entropy, 1 = cross-entropy + soft Dice), the window size, lr, the synthetic share, augmentation.
# The backbone is searched with --space backbone=efficientnet_lite0,resnet18 (ResNets need --weights random
# or a file: no ImageNet ResNet weights can be downloaded here; see check_space).
DEFAULT_SPACE = {
    "lr": "3e-4:3e-3,log",
    "defect_weight": "1,3,10,20",
    "dice_weight": "0,1",
    "window": "192,256,320",
    "synthetic_fraction": "0.25,0.5,0.75",
    "augment": "true,false",
}
SPACE_HELP = ("KEY=SPEC, repeatable; KEY a SegConfig field. SPEC: 'a,b,c' = choice; 'lo:hi' = uniform "
              "(randint, inclusive, if both are integers); 'lo:hi,log' = log-uniform; one value = fixed. "
              f"Overrides the defaults {DEFAULT_SPACE}; KEY=default drops a key (its value comes from the config). "
              "Also e.g. backbone=efficientnet_lite0,resnet18 (with --weights random), crop_size=64,128.")


def parse_space(entries: list[str] | dict[str, str] | None, *, defaults: bool = True) -> dict[str, str]:
    """``["lr=1e-4:1e-2,log", ...]`` merged over :data:`DEFAULT_SPACE`: ``{field: spec}`` (validated)."""
    space = dict(DEFAULT_SPACE) if defaults else {}
    items = entries.items() if isinstance(entries, dict) else [e.partition("=")[::2] for e in entries or []]
    known = {f.name for f in fields(SegConfig)}
    for key, spec in items:
        key, spec = key.strip().replace("-", "_"), spec.strip()
        if key not in known:
            raise ValueError(f"--space {key}: not a SegConfig field; known: {sorted(known)}")
        if not spec:
            raise ValueError(f"--space {key}=: give a spec (e.g. {key}=a,b or {key}=lo:hi[,log]) or {key}=default")
        if spec == "default":
            space.pop(key, None)
        else:
            space[key] = spec
    for key, spec in space.items():
        to_domain(key, spec)  # raises on a bad spec
    return space


def _field_value(key: str, text: str):
    """A value of SegConfig field ``key`` parsed from ``text`` (as on the command line)."""
    f = next(f for f in fields(SegConfig) if f.name == key)
    try:
        return parse_value(text.strip(), str(f.type), field_default(SegConfig, key))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--space {key}: {text!r} is not a valid {f.type} ({exc})") from exc


def to_domain(key: str, spec: str):
    """A Tune domain (or a fixed value) from a ``--space`` spec; see :data:`SPACE_HELP`."""
    from ray import tune

    if ":" in spec:
        bounds, _, flag = spec.partition(",")
        lo_text, _, hi_text = bounds.partition(":")
        if flag not in ("", "log"):
            raise ValueError(f"--space {key}={spec}: after the range only ',log' is allowed")
        try:
            lo, hi = float(lo_text), float(hi_text)
        except ValueError as exc:
            raise ValueError(f"--space {key}={spec}: a range needs numbers, as lo:hi or lo:hi,log") from exc
        if not lo < hi or (flag and lo <= 0):
            raise ValueError(f"--space {key}={spec}: need lo < hi (and lo > 0 with ,log)")
        integer = isinstance(_field_value(key, "1"), int) and lo.is_integer() and hi.is_integer()
        if integer:
            return tune.lograndint(int(lo), int(hi) + 1) if flag else tune.randint(int(lo), int(hi) + 1)
        return tune.loguniform(lo, hi) if flag else tune.uniform(lo, hi)
    values = [_field_value(key, v) for v in spec.split(",")]
    return values[0] if len(values) == 1 else tune.choice(values)


def check_space(space: dict[str, str], base: SegConfig) -> dict[str, str]:
    """``space`` checked against the base config before any trial starts; keys that cannot matter dropped.

    - every backbone choice must have its ``base.weights`` (:func:`dstray.seg.encoders.check_weights`:
      ImageNet ResNets cannot be downloaded here);
    - ``synthetic_fraction`` only matters when both real and generated data are given: otherwise
      it is dropped (with a log line) rather than multiplying identical trials;
    - window and crop choices must fit: every ``crop_size`` <= the smallest ``window``.
    """
    import logging

    from dstray.seg.encoders import check_weights

    space = dict(space)
    for backbone in _choices("backbone", space, base):
        check_weights(backbone, base.weights)
    if "synthetic_fraction" in space and not (base.synthetic and base.real_splits):
        logging.getLogger("dstray").info("--space synthetic_fraction dropped: it only matters with both "
                                         "--synthetic and --real-splits")
        space.pop("synthetic_fraction")
    if base.arch == "buttonlab":
        windows, crops = _choices("window", space, base), _choices("crop_size", space, base)
        if windows and crops and max(crops) > min(windows):
            raise ValueError(f"--space: crop_size up to {max(crops)} does not fit a window of {min(windows)} px; "
                             "lower crop_size or raise window")
    return space


def _choices(key: str, space: dict[str, str], base: SegConfig) -> list:
    """The values a key can take in ``space`` (its range ends for a range), else the base config's value."""
    if key not in space:
        return [getattr(base, key)]
    spec = space[key]
    if ":" in spec:
        lo, _, hi = spec.partition(",")[0].partition(":")
        return [_field_value(key, lo), _field_value(key, hi)]
    return [_field_value(key, v) for v in spec.split(",")]
