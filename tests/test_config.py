import pytest

from pipeline.config import CONFIG_DIR, ConfigError, RunConfig, config_hash, dump_config, load_config, read_yaml


def test_defaults_and_overrides_apply():
    config = load_config(RunConfig, None, ["decode.fps=5", "model.batch_size=8", "tracking.max_gap=3",
                                           "storage_options={endpoint_url: http://127.0.0.1:9}"])
    assert config.decode.fps == 5.0 and config.model.batch_size == 8 and config.tracking.max_gap == 3
    assert config.storage_options == {"endpoint_url": "http://127.0.0.1:9"}
    assert config_hash(config) != config_hash(load_config(RunConfig))
    assert load_config(RunConfig) == RunConfig()


@pytest.mark.parametrize("override,needle", [
    ("decode.fsp=5", "decode.fsp: unknown key (did you mean 'decode.fps'?)"),
    ("decode.fps=fast", "decode.fps"),
    ("decode.every_nth=0", "decode.every_nth"),
    ("model.device=tpu", "model.device"),
    ("grouping.peak_treshold=0.2", "grouping.peak_treshold: unknown key (did you mean 'grouping.peak_threshold'?)"),
    ("topdown.detect_evry=2", "did you mean 'topdown.detect_every'?"),
    ("modle.device=cpu", "modle: unknown key (did you mean 'model'?)"),
    ("decode.zzz=1", "decode.zzz: unknown key (valid keys here: every_nth, fps,"),
    ("write.date=yesterday", "write.date"),
    ("nonsense", "key=value"),
    ("model.runtime=tflite", "model.runtime"),
])
def test_bad_values_name_the_key_on_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(RunConfig, None, [override])
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_onnxruntime_is_refused_where_it_does_not_run():
    with pytest.raises(ConfigError, match="model.runtime=onnxruntime runs fp32 nets on a CPU"):
        load_config(RunConfig, None, ["model.runtime=onnxruntime", "model.precision=bf16"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RunConfig, tmp_path / "nope.yaml")


def leaves(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_config_files_hold_only_changes_to_the_code_defaults(path):
    """Defaults live in the code once: a YAML value equal to its default would hide a later change of the default."""
    changes = leaves(read_yaml(CONFIG_DIR / path))
    defaults = leaves(RunConfig().model_dump(mode="json"))
    loaded = leaves(load_config(RunConfig, CONFIG_DIR / path).model_dump(mode="json"))
    assert changes and all(key in defaults for key in changes)
    repeated = [key for key in changes if loaded[key] == defaults[key]]
    assert not repeated, f"{path} repeats the code's defaults for {repeated}"


def test_show_config_prints_every_key(capsys):
    from jobs.run import main

    assert main(["--show-config", "--set", "decode.fps=5", "--config", str(CONFIG_DIR / "cluster.yaml")]) == 0
    printed = capsys.readouterr().out
    assert printed == dump_config(load_config(RunConfig, CONFIG_DIR / "cluster.yaml", ["decode.fps=5"]))
    assert "fps: 5.0" in printed and "compile: true" in printed and "max_gap:" in printed


def test_setting_one_key_of_a_section_keeps_the_sections_other_defaults():
    from pipeline.training.loop import TrainConfig

    default = TrainConfig().data.generate.val
    val = load_config(TrainConfig, None, ["data.generate.val.num_images=4"]).data.generate.val
    assert (val.num_images, val.seed, val.options) == (4, default.seed, default.options)
    topdown = load_config(RunConfig, None, ["topdown.detect_every=2"]).topdown
    assert topdown.detect_every == 2 and topdown.tiles == RunConfig().topdown.tiles
