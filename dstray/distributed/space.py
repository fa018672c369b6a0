"""Search spaces of ``dstray tune``: the ``--space KEY=SPEC`` syntax and its Ray Tune domains.

Importing this module needs no Ray (the CLI reads :data:`SPACE_HELP` for its help);
:func:`to_domain`, which :func:`parse_space` uses to check each spec, imports ``ray.tune``.
"""

from __future__ import annotations

from dataclasses import fields, replace

from dstray.config import DataPolicy, SegConfig, field_default, parse_value

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
# ``dstray tune --search data``: the data policy's knobs (dstray.config.DataPolicy), the synthetic share and the
# defect-free share, over generated pools made once (one --synthetic dataset per generator, each holding both
# area families) and reused by every trial. ``policy_gen_*`` is one key per defect type of the dataset
# (``policy_gen_crack`` sets ``policy.generators["crack"]``), expanded by check_space.
DATA_SPACE = {
    "synthetic_fraction": "0.125,0.25,0.5",
    "free_fraction": "0.125,0.25",
    "policy_gen_*": "mix,dst,histmatch,copy,none",
    "policy_area_family": "any,reference,procedural",
    "policy_real_only_last": "0,0.3",
    "policy_synthetic_weight": "0.5,1",
    "policy_ignore_band": "0,2",
    "policy_min_visibility": "0,0.5",
}
SPACES = {"seg": DEFAULT_SPACE, "data": DATA_SPACE}
POLICY = "policy_"  # a space key policy_X sets SegConfig.policy.X
GEN = "policy_gen_"  # a space key policy_gen_T sets SegConfig.policy.generators[T] (policy_gen_*: every type)

SPACE_HELP = ("KEY=SPEC, repeatable; KEY a SegConfig field. SPEC: 'a,b,c' = choice; 'lo:hi' = uniform "
              "(randint, inclusive, if both are integers); 'lo:hi,log' = log-uniform; one value = fixed. "
              f"Overrides the defaults {DEFAULT_SPACE}; KEY=default drops a key (its value comes from the config). "
              "Also e.g. backbone=efficientnet_lite0,resnet18 (with --weights random), crop_size=64,128.")


def _known() -> set[str]:
    return {f.name for f in fields(SegConfig) if f.name != "policy"} | {POLICY + f.name for f in fields(DataPolicy)}


def apply_params(cfg: SegConfig, params: dict) -> SegConfig:
    """``cfg`` with a trial's sampled values: SegConfig fields, ``policy_X`` keys into ``cfg.policy`` and
    ``policy_gen_T`` keys into ``cfg.policy.generators[T]``."""
    gens = {k[len(GEN):]: v for k, v in params.items() if k.startswith(GEN)}
    policy = {k[len(POLICY):]: v for k, v in params.items() if k.startswith(POLICY) and not k.startswith(GEN)}
    rest = {k: v for k, v in params.items() if not k.startswith(POLICY)}
    if gens:
        policy["generators"] = {**(cfg.policy.generators or {}), **gens}
    return replace(cfg, **rest, policy=replace(cfg.policy, **policy))


def parse_space(entries: list[str] | dict[str, str] | None, *, defaults: bool = True,
                search: str = "seg") -> dict[str, str]:
    """``["lr=1e-4:1e-2,log", ...]`` merged over the ``search`` space (:data:`SPACES`): ``{key: spec}`` (validated)."""
    if search not in SPACES:
        raise ValueError(f"--search {search!r}: choose one of {', '.join(SPACES)}")
    space = dict(SPACES[search]) if defaults else {}
    items = entries.items() if isinstance(entries, dict) else [e.partition("=")[::2] for e in entries or []]
    known = _known()
    for key, spec in items:
        key, spec = key.strip().replace("-", "_"), spec.strip()
        if key not in known and not key.startswith(GEN):
            raise ValueError(f"--space {key}: not a SegConfig field (or policy_ + a DataPolicy field); known: "
                             f"{sorted(known)}")
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
    if key.startswith(GEN):
        from dstray.policy import POLICY_GENERATORS

        if text.strip() not in POLICY_GENERATORS:
            raise ValueError(f"--space {key}: {text!r} is not one of {', '.join(POLICY_GENERATORS)}")
        return text.strip()
    cls, name = (DataPolicy, key[len(POLICY):]) if key.startswith(POLICY) else (SegConfig, key)
    f = next(f for f in fields(cls) if f.name == name)
    try:
        return parse_value(text.strip(), str(f.type), field_default(cls, name))
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
    if GEN + "*" in space:  # one key per defect type of the dataset
        from dstray.data import load_dataset

        spec = space.pop(GEN + "*")
        for t in load_dataset(base.data).defect_types:
            space.setdefault(GEN + t, spec)
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
        if key.startswith(GEN):
            return [(base.policy.generators or {}).get(key[len(GEN):], base.policy.default_generator)]
        return [getattr(base.policy, key[len(POLICY):]) if key.startswith(POLICY) else getattr(base, key)]
    spec = space[key]
    if ":" in spec:
        lo, _, hi = spec.partition(",")[0].partition(":")
        return [_field_value(key, lo), _field_value(key, hi)]
    return [_field_value(key, v) for v in spec.split(",")]
