"""The run config: every field checked when it is built (so --dry-run too), TOML types, folder spellings."""

from __future__ import annotations

import json

import pytest

from microcond.cli.main import main
from microcond.train import config as config_mod


@pytest.mark.parametrize("flag, value, field", [
    ("--lr", ["-1"], "lr"),
    ("--lr", ["nan"], "lr"),
    ("--weight-decay", ["-1"], "weight_decay"),
    ("--adam-betas", ["0.9"], "adam_betas"),
    ("--adam-betas", ["0.9", "1.0"], "adam_betas"),
    ("--adam-betas", ["0.9", "0.99", "0.999"], "adam_betas"),
    ("--grad-clip", ["-1"], "grad_clip"),
    ("--grad-clip", ["nan"], "grad_clip"),
    ("--warmup-steps", ["-10"], "warmup_steps"),
    ("--buckets", ["garbage"], "buckets"),
    ("--buckets", ["base:1000000000:step=1"], "buckets"),
    ("--log-every", ["0"], "log_every"),
    ("--seed", ["-1"], "seed"),
])
def test_dry_run_and_train_refuse_each_bad_field_in_one_line(tmp_path, capsys, flag, value, field):
    for extra in (["--dry-run"], ["--data", str(tmp_path), "--out", str(tmp_path / "run")]):
        assert main(["train", "--preset", "tiny", flag, *value, *extra]) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.count("\n") == 1 and field in err and flag in err and "Traceback" not in err, err
        assert captured.out == ""
    assert not (tmp_path / "run").exists()


def test_toml_values_of_the_wrong_type_are_refused(tmp_path):
    for line, field in (("steps = true", "steps"), ("lr = true", "lr"), ("latent_cache = 2", "latent_cache"),
                        ("data = 5", "data"), ("adam_betas = [0.9, true]", "adam_betas"), ("adam_betas = 0.9", "adam_betas")):
        path = tmp_path / "run.toml"
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match=f"config field '{field}' expects"):
            config_mod.resolve(toml_path=path)
    path.write_text("steps = 12\nlr = 2e-3\nlatent_cache = false\nadam_betas = [0.8, 0.9]\n")
    cfg = config_mod.resolve(toml_path=path)
    assert (cfg.steps, cfg.lr, cfg.latent_cache, cfg.adam_betas) == (12, 2e-3, False, (0.8, 0.9))


def test_folders_are_stored_absolute_without_a_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    expected = str(tmp_path / "images")
    spellings = ["images", "images/", "./images//", str(tmp_path / "images") + "/", expected]
    configs = [config_mod.resolve("tiny", overrides={"data": s}) for s in spellings]
    assert {c.data for c in configs} == {expected}
    assert len(set(configs)) == 1
    sdxl = config_mod.resolve("sdxl", overrides={"pretrained": "models/sdxl/"})
    assert (sdxl.pretrained, sdxl.vae, sdxl.text_encoders) == (str(tmp_path / "models/sdxl"), str(tmp_path / "models/sdxl/vae"), str(tmp_path / "models/sdxl"))
    # A config saved before paths were normalised still compares equal when it names the same folder.
    saved = {**config_mod.to_dict(configs[0]), "data": "./images/"}
    assert config_mod.differing_fields(config_mod.from_dict(json.loads(json.dumps(saved))), configs[-1]) == []
    other = config_mod.resolve("tiny", overrides={"data": "other"})
    assert config_mod.differing_fields(configs[0], other) == ["data"]
