import pytest

from pipeline.config import DEFAULT_RUN_CONFIG, ConfigError, RunConfig, config_hash, load_config


def test_default_config_loads_and_overrides_apply():
    config = load_config(RunConfig, DEFAULT_RUN_CONFIG, ["decode.fps=5", "model.batch_size=8", "tracking.max_gap=3",
                                                         "storage_options={endpoint_url: http://127.0.0.1:9}"])
    assert config.decode.fps == 5.0 and config.model.batch_size == 8 and config.tracking.max_gap == 3
    assert config.storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert config_hash(config) != config_hash(load_config(RunConfig, DEFAULT_RUN_CONFIG))


@pytest.mark.parametrize("override,needle", [
    ("decode.fsp=5", "decode.fsp: unknown key"),
    ("decode.fps=fast", "decode.fps"),
    ("decode.every_nth=0", "decode.every_nth"),
    ("model.device=tpu", "model.device"),
    ("grouping.peak_treshold=0.2", "grouping.peak_treshold: unknown key"),
    ("write.date=yesterday", "write.date"),
    ("nonsense", "key=value"),
])
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        load_config(RunConfig, DEFAULT_RUN_CONFIG, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.yaml")
