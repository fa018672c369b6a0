"""cluster.yaml validated offline against Ray's own cluster-launcher schema."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_matches_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    validate_config(config)  # raises on unknown keys or bad worker counts
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] > gpu["min_workers"]
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0
    assert any("dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert any("pip install" in c and "dstray" in c for c in config["setup_commands"])


def test_cluster_yaml_with_a_typo_is_rejected():
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["max_wrokers"] = 3
    with pytest.raises(Exception):
        validate_config(prepare_config(config))
