"""The training loop: exact resume, crash safety, refused config changes, DDP equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RecordingNet
from safetensors.torch import load_file

from microcond.sample.run import load_run
from microcond.train import config as config_mod
from microcond.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from microcond.train.launch import run_lock
from microcond.train.loop import train
from microcond.train.monitor import metrics_line


class SyntheticBatches:
    """Deterministic batches in the loader's format; position = batches delivered."""

    def __init__(self, batch_size: int, resolution: int = 16, rank: int = 0, world_size: int = 1):
        self.batch_size, self.resolution, self.rank, self.world = batch_size, resolution, rank, world_size
        self.position = 0

    def _global(self, i: int) -> dict:
        rng = np.random.default_rng([7, i])
        n = self.batch_size * self.world
        yy, xx = np.mgrid[: self.resolution, : self.resolution]
        phase = rng.uniform(0, 6.28, (n, 3, 1, 1))
        pixels = (127.5 + 120 * np.sin(xx / 3.0 + phase) * np.cos(yy / 4.0)).astype(np.uint8)
        original = rng.integers(8, 64, (n, 2))
        ids = np.concatenate([original, np.zeros((n, 2), int), np.full((n, 2), self.resolution)], 1)
        return {"pixels": torch.from_numpy(pixels), "ids": torch.from_numpy(ids).long(), "labels": torch.from_numpy(rng.integers(0, 3, n)).long(), "index": torch.arange(n)}

    def __iter__(self):
        while True:
            batch = self._global(self.position)
            rows = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            self.position += 1
            yield {k: v[rows] for k, v in batch.items()}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def tiny_cfg(**overrides) -> config_mod.TrainConfig:
    base = dict(resolution=16, batch_size=4, steps=6, num_classes=3, precision="fp32", checkpoint_every=3, sample_every=0, log_every=1, warmup_steps=2, lr=1e-3)
    return config_mod.resolve("tiny", overrides={**base, **overrides})


def final_weights(run: Path) -> dict:
    return load_file(str(list_checkpoints(run / "checkpoints")[-1] / "model.safetensors"))


def test_resume_is_bitwise_equal_to_uninterrupted(tmp_path):
    cfg = tiny_cfg()
    train(cfg, tmp_path / "full", SyntheticBatches(4), progress=False)
    train(tiny_cfg(steps=3), tmp_path / "split", SyntheticBatches(4), progress=False)
    train(cfg, tmp_path / "split", SyntheticBatches(4), progress=False)  # same command, more steps
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(str(list_checkpoints(tmp_path / "full" / "checkpoints")[-1] / "ema.safetensors"))
    ema_b = load_file(str(list_checkpoints(tmp_path / "split" / "checkpoints")[-1] / "ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    rows = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7)) and all(np.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "full" / "loss.png").stat().st_size > 0


def test_changed_config_is_refused_naming_fields(tmp_path):
    train(tiny_cfg(steps=1, checkpoint_every=1), tmp_path, SyntheticBatches(4), progress=False)
    with pytest.raises(ValueError, match=r"lr: 0\.001 -> 0\.002.*|.*lr.*"):
        train(tiny_cfg(steps=2, lr=2e-3), tmp_path, SyntheticBatches(4), progress=False)
    with pytest.raises(ValueError, match="signals"):
        train(tiny_cfg(steps=2, signals=("original_size",)), tmp_path, SyntheticBatches(4), progress=False)


def test_keeps_last_k_checkpoints(tmp_path):
    train(tiny_cfg(steps=5, checkpoint_every=1, keep_checkpoints=2), tmp_path, SyntheticBatches(4), progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000004", "step-00000005"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    # Two rounds of 2 rows see the same rows and the same noise as one batch of 4.
    class Halves(SyntheticBatches):
        def __iter__(self):
            for batch in SyntheticBatches(4):
                self.position += 1
                yield {k: v[:2] for k, v in batch.items()}
                yield {k: v[2:] for k, v in batch.items()}

    train(tiny_cfg(steps=3, checkpoint_every=3), tmp_path / "one", SyntheticBatches(4), progress=False)
    train(tiny_cfg(steps=3, checkpoint_every=3, grad_accumulation=2), tmp_path / "acc", Halves(2), progress=False)
    train(tiny_cfg(steps=3, checkpoint_every=3, seed=1), tmp_path / "other", SyntheticBatches(4), progress=False)
    a, b, c = (final_weights(tmp_path / name) for name in ("one", "acc", "other"))
    # Adam divides by sqrt(v), so on weights with near-zero gradients float summation order can
    # move single elements; over all weights the two runs must agree far more closely than
    # runs with another seed do.
    gap = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt().item()
    other = sum(((a[k] - c[k]) ** 2).sum() for k in a).sqrt().item()
    assert gap < 1e-3 * other, (gap, other)


def test_periodic_sample_grids_swap_the_ema_in_and_the_weights_back_exactly(tmp_path, monkeypatch):
    from PIL import Image

    from microcond.sample import training_grids
    from microcond.sample.training_grids import TrainingGrids

    seen = []
    real = training_grids.denoise_fn

    def spy(model, *args, **kwargs):
        seen.append((model, model.training, {k: v.clone() for k, v in model.state_dict().items()}))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training_grids, "denoise_fn", spy)
    train(tiny_cfg(steps=4, checkpoint_every=4, sample_every=2), tmp_path / "grids", SyntheticBatches(4), progress=False, sample_grid=TrainingGrids())
    train(tiny_cfg(steps=4, checkpoint_every=4), tmp_path / "plain", SyntheticBatches(4), progress=False)
    for step in (2, 4):
        grid = Image.open(tmp_path / "grids" / "samples" / f"step-{step:08d}.png")
        assert grid.width > grid.height > 0  # 2 rows of 8 samples
        assert len(np.unique(np.asarray(grid.convert("L")))) > 10  # not a blank image
    assert len(seen) == 2 and seen[0][0] is seen[1][0] and not seen[0][1]  # the training model itself, in eval mode
    ema = load_file(str(list_checkpoints(tmp_path / "grids" / "checkpoints")[-1] / "ema.safetensors"))
    assert all(torch.equal(seen[1][2][k], ema[k]) for k in ema)  # it held the EMA weights of step 4
    weights = final_weights(tmp_path / "grids")  # ...and trained on with its own: grids change nothing
    assert all(torch.equal(weights[k], final_weights(tmp_path / "plain")[k]) for k in weights)
    assert not all(torch.equal(weights[k], ema[k]) for k in ema)


def test_resume_and_load_run_skip_a_corrupt_newest_checkpoint(tmp_path, capsys):
    train(tiny_cfg(), tmp_path, SyntheticBatches(4), progress=False)  # checkpoints at steps 3 and 6
    uninterrupted = {k: v.clone() for k, v in final_weights(tmp_path).items()}  # not a view of the file flipped below
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the tensor data: safetensors has no checksum of its own
    (newest / "model.safetensors").write_bytes(bytes(data))
    capsys.readouterr()
    assert load_run(tmp_path)[3] == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "step-00000006" in err[0] and "sha256" in err[0]
    train(tiny_cfg(), tmp_path, SyntheticBatches(4), progress=False)  # resumes from step 3, rewrites step 6
    assert "step-00000006" in capsys.readouterr().err
    resumed = final_weights(tmp_path)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)


def test_non_finite_loss_stops_before_the_update_and_saves_nothing(tmp_path, monkeypatch):
    train(tiny_cfg(steps=2, checkpoint_every=1, keep_checkpoints=1), tmp_path, SyntheticBatches(4), progress=False)
    # Weights that went NaN before they were hashed: only the loss can tell.
    path = list_checkpoints(tmp_path / "checkpoints")[-1]
    tensors, state = load_checkpoint(path)
    tensors["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors["model"].items()}
    save_checkpoint(tmp_path / "checkpoints", 2, tensors, state, keep=1)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    metrics = (tmp_path / "metrics.jsonl").read_text()
    updates = []
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: updates.append(1) or step(self, *a, **k))
    with pytest.raises(RuntimeError, match="step 3") as caught:
        train(tiny_cfg(steps=4, checkpoint_every=1, keep_checkpoints=1), tmp_path, SyntheticBatches(4), progress=False)
    assert "\n" not in str(caught.value) and not updates
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert (tmp_path / "metrics.jsonl").read_text() == metrics


def test_metrics_rows_are_strict_json():
    def refuse(constant: str):
        raise ValueError(f"bare {constant} is not JSON")

    line = metrics_line({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    assert json.loads(line, parse_constant=refuse) == {"step": 3, "loss": None, "grad_norm": None, "lr": 1e-3}


class FailingBatches(SyntheticBatches):
    """Stops with an error after delivering ``limit`` batches, like a run killed mid-way."""

    def __init__(self, batch_size: int, limit: int):
        super().__init__(batch_size)
        self.limit = limit

    def __iter__(self):
        for batch in super().__iter__():
            if self.position > self.limit:
                raise RuntimeError("data gone")
            yield batch


def metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_metrics_rows_logged_after_the_checkpoint(tmp_path):
    with pytest.raises(RuntimeError, match="data gone"):
        train(tiny_cfg(), tmp_path, FailingBatches(4, limit=5), progress=False)  # checkpoint at 3, rows up to 5
    assert metric_steps(tmp_path) == [1, 2, 3, 4, 5]
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "lo')  # a row cut short by a kill
    train(tiny_cfg(), tmp_path, SyntheticBatches(4), progress=False)  # resumes at 3
    assert metric_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    train(tiny_cfg(steps=8), tmp_path, SyntheticBatches(4), progress=False)
    assert metric_steps(tmp_path) == list(range(1, 9))


def test_a_config_without_checkpoints_binds_nothing(tmp_path):
    # The first start failed before its first checkpoint: a corrected rerun is a new start.
    with pytest.raises(RuntimeError, match="data gone"):
        train(tiny_cfg(), tmp_path, FailingBatches(4, limit=1), progress=False)
    assert (tmp_path / "config.json").exists() and metric_steps(tmp_path) == [1]
    train(tiny_cfg(steps=2, lr=5e-4), tmp_path, SyntheticBatches(4), progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 5e-4 and metric_steps(tmp_path) == [1, 2]
    with pytest.raises(ValueError, match="lr: 0.0005 -> 0.001"):
        train(tiny_cfg(steps=3), tmp_path, SyntheticBatches(4), progress=False)


def test_data_folder_spellings_are_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    run = tmp_path / "run"
    train(tiny_cfg(steps=1, data="images/"), run, SyntheticBatches(4), progress=False)
    assert json.loads((run / "config.json").read_text())["data"] == str(tmp_path / "images")
    train(tiny_cfg(steps=2, data=str(tmp_path / "images")), run, SyntheticBatches(4), progress=False)
    # A config.json written before folders were normalised, naming the same folder.
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "data": "./images/"}))
    train(tiny_cfg(steps=3, data="images"), run, SyntheticBatches(4), progress=False)
    with pytest.raises(ValueError, match="different config.*data"):
        train(tiny_cfg(steps=4, data="other"), run, SyntheticBatches(4), progress=False)


def test_a_second_training_on_the_same_folder_is_refused_naming_the_holder(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(ValueError, match=f"pid {os.getpid()}\\)") as caught:
            train(tiny_cfg(steps=1), tmp_path, SyntheticBatches(4), progress=False)
        assert "\n" not in str(caught.value) and "--out" in str(caught.value)
    assert not (tmp_path / "config.json").exists()
    # Another process holds it, then is killed: the lock is taken over.
    code = "import sys, time; from pathlib import Path; from microcond.train.launch import run_lock\n" \
           "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"pid {holder.pid}\\)"):
            train(tiny_cfg(steps=1), tmp_path, SyntheticBatches(4), progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(tiny_cfg(steps=1), tmp_path, SyntheticBatches(4), progress=False)
    assert metric_steps(tmp_path) == [1]


@pytest.mark.parametrize("cap", [1.0, 20.0])
def test_loss_weight_cap_reweighs_v_loss_in_epsilon_terms(cap):
    """v-loss x min(1, cap x alpha_bar): cap 1 is exactly the epsilon loss of the same prediction."""
    from microcond.train.batch import pixel_batch
    from microcond.train.loop import step_generator
    from microcond.train.loss import DiffusionLoss

    pixels = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    batch = pixel_batch({"pixels": pixels, "ids": torch.zeros(6, 6, dtype=torch.long), "labels": torch.zeros(6, dtype=torch.long)})
    output = lambda x: torch.linspace(-1, 1, x.numel()).reshape(x.shape)  # noqa: E731
    losses, seen = {}, {}
    for c in (0.0, cap):
        cfg = config_mod.resolve("tiny", overrides={"prediction_type": "v_prediction", "loss_weighting": "none", "loss_weight_cap": c})
        net = RecordingNet(cfg, output)
        loss_fn = DiffusionLoss(cfg)
        losses[c] = loss_fn(net, batch, step_generator(0, 3, torch.device("cpu")), slice(0, 6), 6)
        seen = net.seen[-1]
    a = loss_fn.scheduler.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)  # (b, 1, 1, 1)
    pred, xt, x0 = output(seen["x"]), seen["x"], batch.x0
    noise = (xt - a.sqrt() * x0) / (1 - a).sqrt()
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    eps_hat = a.sqrt() * pred + (1 - a).sqrt() * xt  # diffusers' v -> epsilon conversion
    assert torch.allclose(losses[0.0], (pred - v).pow(2).mean(), rtol=1e-4)
    per_sample_v = (pred - v).pow(2).mean(dim=(1, 2, 3))
    assert torch.allclose(losses[cap], (torch.clamp(cap * a.flatten(), max=1) * per_sample_v).mean(), rtol=1e-4)
    if cap == 1.0:
        assert torch.allclose(losses[cap], (eps_hat - noise).pow(2).mean(), rtol=1e-4)
    assert losses[cap] < losses[0.0]


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_older_ones(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import microcond.train.checkpoint as ckpt

    train(tiny_cfg(steps=3), tmp_path, SyntheticBatches(4), progress=False)  # checkpoint at step 3
    before = {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(tmp_path / "checkpoints")}
    written = []

    def full_disk(tensors, path):
        written.append(path)
        if len(written) == 2:  # the second file of the step-6 checkpoint
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")
        return save(tensors, path)

    save = ckpt.save_file
    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(OSError, match="could not write checkpoint .*step-00000006.*No space left") as caught:
        train(tiny_cfg(steps=6), tmp_path, SyntheticBatches(4), progress=False)
    assert "\n" not in str(caught.value)
    assert {p.name: (p / "model.safetensors").read_bytes() for p in list_checkpoints(tmp_path / "checkpoints")} == before
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(ckpt, "save_file", save)
    train(tiny_cfg(steps=6), tmp_path, SyntheticBatches(4), progress=False)  # space again: resumes from step 3
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step-00000006"


def test_resume_is_bitwise_equal_under_the_edm_recipe_with_zero_initialised_conditioning(tmp_path):
    recipe = dict(prediction_type="v_prediction", timestep_sampling="lognormal", loss_weighting="edm", zero_init_conditioning=True, weight_decay=0.01)
    train(tiny_cfg(**recipe), tmp_path / "full", SyntheticBatches(4), progress=False)
    train(tiny_cfg(steps=3, **recipe), tmp_path / "split", SyntheticBatches(4), progress=False)
    train(tiny_cfg(**recipe), tmp_path / "split", SyntheticBatches(4), progress=False)
    for stem in ("model", "ema"):
        a, b = (load_file(str(list_checkpoints(tmp_path / run / "checkpoints")[-1] / f"{stem}.safetensors")) for run in ("full", "split"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stem
    assert load_file(str(list_checkpoints(tmp_path / "full" / "checkpoints")[-1] / "model.safetensors"))["unet.add_embedding.linear_2.weight"].any()


def test_health_check_counts_live_units_in_the_ema_weights():
    """The logged count is what the EMA weights (which draw the samples) do with the window's inputs."""
    from microcond.model import ConditioningHealth, build_denoiser

    torch.manual_seed(0)
    model = build_denoiser(tiny_cfg())
    health = ConditioningHealth(model, rows=8)
    x, t = torch.randn(6, 3, 16, 16), torch.full((6,), 10)
    ids = torch.tensor([[8, 8, 0, 0, 16, 16]] * 6)
    with torch.no_grad():
        model(x, t, ids, None, torch.zeros(6, dtype=torch.long))
        model(x, t, ids, None, torch.zeros(6, dtype=torch.long))
    assert sum(len(v) for v in health.inputs) == 8  # the window keeps its first `rows` inputs
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    units = model.unet.add_embedding.linear_1.out_features
    assert health.live(weights) == units == 256  # freshly initialised: every unit answers (the preset's 256-wide MLP)
    weights["unet.add_embedding.linear_1.bias"] -= 1000.0  # an EMA whose units all died
    assert health.report(weights) == {"cond_units_live": 0, "cond_units": units}
    assert health.report(weights) == {}  # a new window: nothing seen yet
    with torch.no_grad():
        model.eval()(x, t, ids, None, torch.zeros(6, dtype=torch.long))  # a sample grid's forward
    assert health.inputs == []  # is not training input


def test_a_dying_conditioning_path_warns_once_while_it_trains(tmp_path, capsys, monkeypatch):
    from microcond.model import ConditioningHealth

    assert ConditioningHealth.warning({"step": 5, "cond_units_live": 40, "cond_units": 128}) is None
    assert ConditioningHealth.warning({"step": 5}) is None
    monkeypatch.setattr(ConditioningHealth, "live", lambda self, weights: 3)  # an EMA whose units died
    train(tiny_cfg(steps=3), tmp_path, SyntheticBatches(4), progress=False)
    err = capsys.readouterr().err
    assert err.count("warning: at step 1 only 3 of 256 units") == 1 and err.count("warning:") == 1


def test_checkpoint_time_is_reported_apart_from_images_per_second(tmp_path):
    train(tiny_cfg(), tmp_path, SyntheticBatches(4), progress=False)  # checkpoints after steps 3 and 6, a row per step
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    maintenance = {r["step"]: r["maintenance_s"] for r in rows}
    assert maintenance[4] > 0 and maintenance[1] == maintenance[2] == maintenance[3] == maintenance[5] == 0  # step 3's checkpoint, in step 4's row
    assert all(r["images_per_s"] > 0 for r in rows)


def test_ema_on_the_cpu_equals_the_ema_beside_the_model_and_off_samples_the_weights(tmp_path):
    train(tiny_cfg(), tmp_path / "device", SyntheticBatches(4), progress=False)
    train(tiny_cfg(ema="cpu"), tmp_path / "cpu", SyntheticBatches(4), progress=False)
    train(tiny_cfg(ema="off", steps=3), tmp_path / "off", SyntheticBatches(4), progress=False)
    train(tiny_cfg(ema="off"), tmp_path / "off", SyntheticBatches(4), progress=False)  # resumes without an EMA
    last = {name: list_checkpoints(tmp_path / name / "checkpoints")[-1] for name in ("device", "cpu", "off")}
    ema_device, ema_cpu = (load_file(str(last[n] / "ema.safetensors")) for n in ("device", "cpu"))
    assert ema_device.keys() == ema_cpu.keys() and all(torch.equal(ema_device[k], ema_cpu[k]) for k in ema_device)
    assert load_file(str(last["off"] / "ema.safetensors")) == {}
    weights = final_weights(tmp_path / "off")
    assert all(torch.equal(weights[k], final_weights(tmp_path / "device")[k]) for k in weights)  # the EMA never touches training
    model, *_ = load_run(tmp_path / "off")  # sampling an EMA-less run takes the weights
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_adamw8bit_resumes_bitwise_and_its_state_is_8_bit(tmp_path):
    train(tiny_cfg(optimizer="adamw8bit"), tmp_path / "full", SyntheticBatches(4), progress=False)
    train(tiny_cfg(optimizer="adamw8bit", steps=3), tmp_path / "split", SyntheticBatches(4), progress=False)
    train(tiny_cfg(optimizer="adamw8bit"), tmp_path / "split", SyntheticBatches(4), progress=False)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_file(str(list_checkpoints(tmp_path / "full" / "checkpoints")[-1] / "optimizer.safetensors"))
    moments = [v for k, v in state.items() if k.endswith(("/state1", "/state2"))]
    eight = sum(v.numel() for v in moments if v.dtype == torch.uint8)  # bitsandbytes keeps tensors under 4096 elements in fp32
    assert eight > 0.9 * sum(v.numel() for v in moments)
    assert all(f"{k}/int" in state for k in state if k.endswith(".step"))  # bitsandbytes counts steps in a Python int: restored as one
    train(tiny_cfg(), tmp_path / "fp32", SyntheticBatches(4), progress=False)
    assert not all(torch.equal(a[k], v) for k, v in final_weights(tmp_path / "fp32").items())  # another optimizer ran


def test_adamw8bit_without_bitsandbytes_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable
    with pytest.raises(ValueError, match="--optimizer adamw8bit needs bitsandbytes"):
        train(tiny_cfg(optimizer="adamw8bit"), tmp_path, SyntheticBatches(4), progress=False)
    with pytest.raises(ValueError, match="config optimizer must be adamw or adamw8bit"):
        tiny_cfg(optimizer="sgd")


def test_tensorboard_gets_the_metrics_rows_and_the_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from microcond.sample.training_grids import TrainingGrids

    train(tiny_cfg(steps=4, checkpoint_every=4, sample_every=2, log_to="tensorboard"), tmp_path, SyntheticBatches(4), progress=False,
          sample_grid=TrainingGrids())
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert np.allclose([e.value for e in loss], [r["loss"] for r in rows], rtol=1e-6)
    assert {"train/images_per_s", "train/grad_norm", "train/lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Images("samples")] == [2, 4]
