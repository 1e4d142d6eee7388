"""The table committed under studies/tables/ (MoE GEMM tuned on the lent H100, attention on the lent H200): loads,
covers the gpt_oss_20b preset, and every entry is still a valid config that passes the current constraints on the
device it was tuned on."""

from __future__ import annotations

import pytest

from autotune import defaults, registry
from autotune.tuning import presets
from autotune.device import DeviceProfile
from autotune.table.lookup import open_table
from autotune.table import ConfigTable

H100_KEY = "nvidia-h100-80gb-hbm3-sm90"
H200_KEY = "nvidia-h200-sm90"


def _profile(info: dict) -> DeviceProfile:
    fields = dict(info)
    fields["compute_capability"] = tuple(int(part) for part in str(fields["compute_capability"]).split("."))
    return DeviceProfile(**fields)


@pytest.fixture(scope="module")
def table() -> ConfigTable:
    return ConfigTable.load(defaults.TABLE, missing_ok=False)


@pytest.mark.parametrize("kernel, device_key", [("moe_gemm", H100_KEY), ("attention", H200_KEY)])
def test_sections_cover_the_20b_preset(table, kernel, device_key):
    assert device_key in table.device_keys()
    spec = registry.get(kernel)
    wanted = {(variant, tuple(sorted(shape.items())))
              for variant, shape in presets.expand(presets.load("gpt_oss_20b").kernels[kernel], spec)}
    have = {(e.variant, tuple(sorted(e.shape.items()))) for e in table.entries(device_key) if e.kernel == kernel}
    assert wanted <= have, sorted(wanted - have)


def test_entries_pass_current_constraints(table):
    for device_key in table.device_keys():
        device = _profile(table.device_info(device_key))
        for entry in table.entries(device_key):
            spec = registry.get(entry.kernel)
            space = spec.space(entry.variant, entry.shape, device)
            assert space.validate(entry.config) == dict(entry.config), entry.key
            assert space.check(entry.config, entry.shape, device) is None, entry.key
            spec.kernel.config_from_dict(entry.config)  # the kernel accepts it too
            assert entry.median_us > 0 and entry.fingerprint["gpu_name"] == device.name


def test_runtime_lookup_serves_h100_entries_only_to_h100(table):
    h100 = _profile(table.device_info(H100_KEY))
    runtime = open_table(defaults.TABLE, h100)
    exact = runtime.lookup("moe_gemm", "mlp1", {"M": 16, "N": 5760, "K": 2880, "E": 32, "top_k": 4})
    assert exact.source == "exact"
    nearest = runtime.lookup("moe_gemm", "mlp1", {"M": 3, "N": 5760, "K": 2880, "E": 32, "top_k": 4})
    assert nearest.source == "nearest" and nearest.entry.shape["M"] == 4  # |log2 3 - 2| < |log2 3 - 1|
    other = _profile({**table.device_info(H100_KEY), "key": "nvidia-gb10-sm121", "name": "NVIDIA GB10"})
    with pytest.warns(RuntimeWarning):
        fallback = open_table(defaults.TABLE, other).lookup("moe_gemm", "mlp1",
                                                            {"M": 16, "N": 5760, "K": 2880, "E": 32, "top_k": 4})
    assert fallback.source == "default"
