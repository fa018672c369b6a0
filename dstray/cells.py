"""The paper's experiments as cells, and their results files (pure: no Ray).

A **cell** is one segmenter run: an arch x its training data x a seed. :func:`plan` lists the
cells of an experiment (``table1``, ``fig6``, ``samples``) with their full ``SegConfig`` and
the generated **pools** they train on. A pool is one generated dataset, made once per
(generator, seed, size) under ``RUN/gen/<generator>-s<seed>-n<size>/`` and shared by every cell
that needs it; DST pools use the DST models fitted with that seed (``RUN/models/seed-<seed>/``).
A cell's seed s is a run's seed, as in ``dstray pipeline --seed s``: each stage gets
``stage_seeds(s)[stage]`` (:func:`dstray.seeds.stage_seeds`): the DST fits ``["dst"]``, the pools'
generation ``["generate"]``, the segmenter ``["seg"]``. Names keep s (``buttonlab-dst-s0``,
``RUN/gen/dst-s0-n300``, ``RUN/models/seed-0``); the configs carry the derived seeds.

Results: ``RESULTS/<experiment>.jsonl``, one JSON line per finished cell (:func:`append_line`,
one ``write`` of the whole line). A cell is finished when a line with its name and the digest of
its settings (:func:`settings`) is in the file; a line that does not parse (a run killed while
writing) is ignored and its cell run again. When a cell's settings change (another policy,
preset sizes), its new line supersedes the old one (the report uses the last line per cell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from dstray.config import (ARCHS, GENERATORS, DataPolicy, GenerateConfig, SegConfig, to_dict,
                           without_later_defaults)
from dstray.data import load_dataset, sample_root
from dstray.policy import wanted_generators
from dstray.presets import ExperimentPreset, chosen_policy, with_policy
from dstray.seeds import stage_seeds

log = logging.getLogger("dstray")

EXPERIMENTS = ("table1", "fig6", "samples")
TABLE1_DATA = ("refs", "copy", "histmatch", "dst", "policy")  # Table 1's columns: references only, + each, + policy
DST_FREE = ("device", "log_every", "checkpoint_every")  # DST fields that do not change a fit: not in the digest
SAMPLE_NAME = "sample"  # results name of the embedded sample (results/sample/)


@dataclass(frozen=True)
class Pool:
    """One generated dataset: ``size`` samples of ``generator`` for the run seed ``seed`` (generated with
    ``stage_seeds(seed)["generate"]``, DST pools from the fits of ``stage_seeds(seed)["dst"]``)."""

    generator: str
    seed: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.generator}-s{self.seed}-n{self.size}"


@dataclass
class Cell:
    """One segmenter run of an experiment; ``name`` is unique within the experiment."""

    experiment: str
    arch: str
    data: str  # training data label: refs | copy | histmatch | dst | policy | B | C
    seed: int  # the run seed s (its name's -s<s>); the segmenter's is seg.seed = stage_seeds(s)["seg"]
    seg: SegConfig  # the full config, synthetic = the pools' Parquet folders
    pools: list[Pool] = field(default_factory=list)
    k: int | None = None  # fig6: real train images added to the references
    samples: int | None = None  # samples: generated samples per pool

    @property
    def group(self) -> str:
        """The cell's name without its seed: the cells a mean and std are taken over."""
        extra = f"-k{self.k}" if self.k is not None else f"-n{self.samples}" if self.samples is not None else ""
        return f"{self.arch}-{self.data}{extra}"

    @property
    def name(self) -> str:
        return f"{self.group}-s{self.seed}"


def pool_dir(run: str | Path, pool: Pool) -> Path:
    return Path(run) / "gen" / pool.name


def models_dir(run: str | Path, seed: int) -> Path:
    """The DST fits of run seed ``seed`` (fitted with :func:`dst_config`'s seed)."""
    return Path(run) / "models" / f"seed-{seed}"


def dst_config(p: ExperimentPreset, seed: int):
    """The DST fit settings of run seed ``seed``: the preset's, seeded with ``stage_seeds(seed)["dst"]``."""
    return replace(p.dst, seed=stage_seeds(seed)["dst"])


def generate_config(pool: Pool, p: ExperimentPreset, *, data: str | None, run: str | Path,
                    use_gpu: str = "auto") -> GenerateConfig:
    """How ``pool`` is generated: seed ``stage_seeds(pool.seed)["generate"]``; DST pools read the models fitted
    for the same run seed."""
    return GenerateConfig(data=data, models=str(models_dir(run, pool.seed)) if pool.generator == "dst" else None,
                          generator=pool.generator, num_samples=pool.size, seed=stage_seeds(pool.seed)["generate"],
                          out=str(pool_dir(run, pool)), use_gpu=use_gpu,
                          area=replace(p.dst.area, family=p.area_family), contrast=p.contrast)


def plan(experiment: str, p: ExperimentPreset, *, data: str | None, run: str | Path, seeds: list[int]) -> list[Cell]:
    """Every cell of ``experiment`` for ``seeds`` (see docs/experiments.md for the grid)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {', '.join(EXPERIMENTS)}")
    dataset = load_dataset(data)
    types = sorted({s.defect_type for s in dataset.references()})
    policy = chosen_policy()
    cells: list[Cell] = []

    def add(arch: str, label: str, seed: int, pools: list[Pool], *, real_limit=None, splits=("reference",),
            generator: str | None = None, **extra) -> None:
        # every cell: the same real data (its splits + the preset's defect-free share); with pools, the chosen
        # policy (with one generator for the single-generator columns), so the generated rows are the difference
        seg = replace(p.seg, arch=arch, data=data, seed=stage_seeds(seed)["seg"], real_splits=list(splits),
                      real_limit=real_limit, synthetic=[str(pool_dir(run, x) / "data") for x in pools])
        seg = with_policy(seg, generator=generator) if pools else replace(seg, policy=DataPolicy())
        cells.append(Cell(experiment, arch, label, seed, seg, pools, **extra))

    def policy_pools(seed: int, size: int) -> list[Pool]:
        return [Pool(g, seed, size) for g in wanted_generators(policy, types)]

    for seed in seeds:
        if experiment == "table1":
            for arch in ARCHS:
                add(arch, "refs", seed, [])
                for g in GENERATORS:
                    add(arch, g, seed, [Pool(g, seed, p.num_samples)], generator=g)
                add(arch, "policy", seed, policy_pools(seed, p.num_samples))
        elif experiment == "fig6":
            n_refs, n_train = len(dataset.references()), len(dataset.split("train"))
            for k in dict.fromkeys(n_train if k is None else min(k, n_train) for k in p.real_counts):
                splits = ("reference", "train")
                add("buttonlab", "B", seed, [], real_limit=n_refs + k, splits=splits, k=k)
                add("buttonlab", "C", seed, policy_pools(seed, p.num_samples), real_limit=n_refs + k, splits=splits,
                    k=k)
        else:
            for n in p.sample_counts:
                add("buttonlab", "policy", seed, policy_pools(seed, n), samples=n)
    return cells


def settings(cell: Cell, p: ExperimentPreset, data_name: str) -> dict:
    """What a cell's result depends on, without machine paths: its SegConfig (data: the dataset's
    name, synthetic: pool names), its pools' generation and DST settings, the seed of every stage
    (``seeds``: ``run`` = the cell's seed, ``dst``, ``generate``, ``seg`` as the stages got them), and their
    ``digest``."""
    seg = to_dict(replace(cell.seg, data=data_name, synthetic=[x.name for x in cell.pools], device="auto"))
    pool_cfg = generate_config(Pool("copy", 0, 0), p, data=None, run="")
    gen = {k: v for k, v in without_later_defaults(pool_cfg).items()
           if k not in ("data", "models", "generator", "num_samples", "seed", "out", "use_gpu")}
    out = {"seg": seg, "pools": [dataclasses.asdict(x) for x in cell.pools], "generate": gen if cell.pools else None,
           "dst": {k: v for k, v in without_later_defaults(dst_config(p, cell.seed)).items() if k not in DST_FREE}
           if any(x.generator == "dst" for x in cell.pools) else None,
           "seeds": _stage_seeds_used(cell)}
    out["digest"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()[:12]
    return out


def _stage_seeds_used(cell: Cell) -> dict:
    """The cell's run seed and the seeds its stages got: ``seg``, ``generate`` (with pools), ``dst`` (DST pools)."""
    seeds, used = stage_seeds(cell.seed), ["seg"]
    if cell.pools:
        used.insert(0, "generate")
    if any(x.generator == "dst" for x in cell.pools):
        used.insert(0, "dst")
    return {"run": cell.seed, **{k: seeds[k] for k in used}}


def dataset_name(data: str | None) -> str:
    """The results name of a dataset: its folder's name (``magnetic-tile``); the embedded sample: ``sample``."""
    root = load_dataset(data).root
    return SAMPLE_NAME if root == sample_root() else root.name


def results_dir(data: str | None, results: str | None = None) -> Path:
    """``results`` or ``results/<dataset name>`` (relative to the working directory: run from the repo)."""
    return Path(results) if results else Path("results") / dataset_name(data)


def machine() -> dict:
    """The machine a cell ran on, without its name: OS, CPUs, torch threads, GPU, 1/5/15-min load now."""
    import torch

    return {"os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


# --------------------------------------------------------------------------- results files
def append_line(path: str | Path, record: dict) -> None:
    """Append ``record`` as one JSON line in one ``write`` (``O_APPEND``), then fsync.

    A line left without its newline by a killed writer is closed first (it stays unparsable
    and is ignored), so a new line never glues onto it.
    """
    from dstray.seg.evaluate import strict_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(strict_json(record), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | Path) -> list[dict]:
    """The parsable lines of a results file (none if it does not exist); a broken line is logged and skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for i, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            records.append(json.loads(text))
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (a run killed while writing it?); ignored, its cell runs again",
                        path, i)
    return records


def finished(path: str | Path) -> set[tuple[str, str]]:
    """``(cell name, settings digest)`` of every finished cell in a results file."""
    return {(r["cell"], r["settings"]["digest"]) for r in read_lines(path)}
