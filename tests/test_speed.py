"""Speed levers against eager fp32 on the CPU, with the tiny HRNet (hrnet_w18_small).

Compiled tests use the `aot_eager` backend (Dynamo + AOTAutograd, no code generation):
Inductor's C++ compile on this CPU takes minutes cold, so its test is marked slow. With
aot_eager the graphs run the same kernels as eager, so loss, gradients and BatchNorm
statistics must agree to float32 round-off (rtol 1e-5); under Inductor, fused reductions
change the summation order (tolerance below).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from hrnet_sweep.config import load_config
from hrnet_sweep.dbnet import speed
from hrnet_sweep.dbnet.batch_size import largest_batch, resolve_batch_size
from hrnet_sweep.dbnet.loss import build_loss
from hrnet_sweep.dbnet.model import build_model
from hrnet_sweep.errors import ConfigError

pytestmark = pytest.mark.model

SIZE = 64
TINY = [
    "preset=hrnet_w18_small_cpu",
    f"data.image_height={SIZE}",
    f"data.image_width={SIZE}",
    "models.decoder.inner_channels=32",
]


def _cfg(tmp_path, *extra):
    return load_config([*TINY, f"trainer.compile_cache_dir={tmp_path / 'cache'}", *extra])


def _batch(n=2):
    g = torch.Generator().manual_seed(1)
    gt = (torch.rand(n, SIZE, SIZE, generator=g) > 0.8).float()
    return torch.randn(n, 3, SIZE, SIZE, generator=g), {
        "prob_map": gt,
        "prob_mask": torch.ones_like(gt),
        "thresh_mask": torch.ones_like(gt),
        "thresh_map": 0.3 + 0.4 * torch.rand(n, SIZE, SIZE, generator=g),
    }


def _step(model, cfg):
    """Loss, gradients and buffers after one training forward/backward."""
    x, batch = _batch()
    loss = build_loss(cfg)(model(x), batch)["loss"]
    loss.backward()
    return (
        loss.detach(),
        {n: p.grad.clone() for n, p in model.named_parameters()},
        {n: b.clone() for n, b in model.named_buffers()},
    )


def _eager_and_levers(cfg, backend="aot_eager"):
    torch.manual_seed(0)
    eager = build_model(cfg).train()
    model = copy.deepcopy(eager)
    speed.prepare_model(model, cfg, speed.configure_backends(cfg), backend=backend)
    return _step(eager, cfg), _step(model, cfg), model


def _assert_close(ref, got, rtol=1e-5, atol=1e-7):
    (l0, g0, b0), (l1, g1, b1) = ref, got
    torch.testing.assert_close(l1, l0, rtol=rtol, atol=atol)
    assert g0.keys() == g1.keys() and b0.keys() == b1.keys()  # state dict keys unchanged
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=rtol, atol=atol, msg=name)
    for name in b0:  # BatchNorm running statistics: updated once per step
        torch.testing.assert_close(b1[name], b0[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize(
    "levers",
    [
        ["trainer.compile=true"],
        ["trainer.activation_checkpointing=true"],
        ["trainer.compile=true", "trainer.activation_checkpointing=true"],
        ["trainer.compile=true", "trainer.compile_scope=full", "trainer.activation_checkpointing=true"],
    ],
    ids=["regional", "checkpointing", "regional+checkpointing", "full+checkpointing"],
)
def test_levers_give_eager_loss_gradients_and_batchnorm_stats(tmp_path, levers):
    cfg = _cfg(tmp_path, *levers)
    ref, got, model = _eager_and_levers(cfg)
    _assert_close(ref, got)
    model.eval()  # evaluation runs eager and needs no gradients
    with torch.no_grad():
        assert model(_batch()[0])["prob_logits"].shape == (2, 1, SIZE, SIZE)


def test_regional_compile_covers_the_repeated_hrnet_blocks_decoder_and_heads():
    from timm.models.hrnet import HighResolutionModule

    model = build_model(load_config(TINY))
    regions = speed.compile_regions(model)
    hr = [m for m in model.backbone.modules() if isinstance(m, HighResolutionModule)]
    assert all(any(m is r for r in regions) for m in [*hr, *model.backbone.layer1, model.decoder, model.prob_head])
    other = build_model(load_config([*TINY, "models.name=resnet18"]))
    assert speed.compile_regions(other)[0] is other.backbone


def test_plain_checkpointing_would_update_batchnorm_twice(tmp_path, monkeypatch):
    # the restore context is what keeps the running statistics equal to eager's
    import contextlib

    monkeypatch.setattr(speed, "_restore_batchnorm_stats", lambda module: contextlib.nullcontext())
    ref, got, _ = _eager_and_levers(_cfg(tmp_path, "trainer.activation_checkpointing=true"))
    assert not torch.allclose(
        ref[2]["backbone.stage2.0.branches.0.0.bn1.running_mean"],
        got[2]["backbone.stage2.0.branches.0.0.bn1.running_mean"],
    )


def test_activation_checkpointing_keeps_fewer_activations():
    def saved_bytes(model):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        x, batch = _batch()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            build_loss(cfg)(model(x), batch)["loss"]
        return total

    cfg = load_config(TINY)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    before = saved_bytes(model)
    speed.apply_activation_checkpointing(model)
    assert saved_bytes(model) < 0.7 * before


def test_activation_checkpointing_is_for_hrnet_only():
    model = build_model(load_config([*TINY, "models.name=resnet18"]))
    with pytest.raises(ConfigError, match="activation_checkpointing.*HRNet"):
        speed.apply_activation_checkpointing(model)


@pytest.mark.slow
def test_inductor_regional_compile_matches_eager(tmp_path):
    # Inductor fuses BatchNorm's reductions (another summation order); at 2x2 pixels in
    # the stride-32 branch that moves single small gradients by about 1%, the whole
    # gradient vector by under 1% (measured: 0.4%).
    cfg = _cfg(tmp_path, "trainer.compile=true")
    ref, got, _ = _eager_and_levers(cfg, backend="inductor")
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-6)
    g0, g1 = (torch.cat([g.flatten() for g in grads.values()]) for grads in (ref[1], got[1]))
    assert float((g1 - g0).norm() / g0.norm()) < 1e-2


# ----------------------------------------------------------------------------- backends, cache


def test_backends_on_cpu_keep_fp32_and_set_the_compile_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    b = speed.configure_backends(_cfg(tmp_path, "trainer.compile=true", "trainer.matmul_precision=medium"))
    assert not b.cuda and not b.cudnn_benchmark and b.matmul_precision == "highest"
    assert b.compile_cache == str((tmp_path / "cache").resolve())
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == b.compile_cache
    assert os.environ["TRITON_CACHE_DIR"].startswith(b.compile_cache)
    dyn = torch._dynamo.config
    assert getattr(dyn, "recompile_limit", getattr(dyn, "cache_size_limit", 0)) >= speed.RECOMPILE_LIMIT


def test_compile_cache_is_one_folder_per_sweep(tmp_path, monkeypatch):
    for env in (speed.COMPILE_CACHE_ENV, "TORCHINDUCTOR_CACHE_DIR", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(env, raising=False)
    cfg = load_config([*TINY, f"output_dir={tmp_path}"])
    assert speed.compile_cache_dir(cfg) == tmp_path / ".compile_cache" / "default"
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    assert speed.compile_cache_dir(cfg) == tmp_path / ".compile_cache" / "abc123"
    monkeypatch.setenv(speed.COMPILE_CACHE_ENV, str(tmp_path / "agent"))
    assert speed.compile_cache_dir(cfg) == tmp_path / "agent"
    cfg = load_config([*TINY, f"trainer.compile_cache_dir={tmp_path / 'key'}"])
    assert speed.compile_cache_dir(cfg) == tmp_path / "key"


# ----------------------------------------------------------------------------- batch size, loader


@pytest.mark.parametrize("start", [1, 2, 5, 16, 64])
@pytest.mark.parametrize("largest", [1, 3, 8, 13, 40, 64, 100])
def test_largest_batch_finds_the_edge(start, largest):
    probes = []

    def fits(n):
        probes.append(n)
        return n <= largest

    assert largest_batch(fits, start=start, limit=64) == min(largest, 64)
    assert len(probes) <= 2 * 7  # doubling, then bisection: logarithmic


def test_largest_batch_when_nothing_fits():
    with pytest.raises(ValueError, match="not even a batch of 1"):
        largest_batch(lambda n: False, start=4)


def test_auto_batch_size_on_the_cpu_keeps_the_presets_batch(caplog):
    cfg = load_config([*TINY, "data.auto_batch_size=true", "data.batch_size=3"])
    with caplog.at_level("INFO"):
        assert resolve_batch_size(cfg).data.batch_size == 3
    assert "no CUDA GPU" in caplog.text and "data.batch_size=3" in caplog.text


def test_loader_settings_come_from_the_config():
    from hrnet_sweep.pipeline.train import _loader

    ds = [{"image": torch.zeros(1)}] * 8
    dl = _loader(
        ds,
        load_config([*TINY, "data.num_workers=2", "data.prefetch_factor=4", "data.persistent_workers=false"]),
        shuffle=True,
        batch_size=4,
    )
    assert dl.prefetch_factor == 4 and not dl.persistent_workers and dl.drop_last
    assert dl.pin_memory == torch.cuda.is_available()
    dl = _loader(ds, load_config([*TINY, "data.num_workers=0"]), shuffle=False, batch_size=4)
    assert dl.prefetch_factor is None and not dl.persistent_workers and not dl.drop_last


def test_fast_preset_extends_the_reproducibility_block():
    fast, base = load_config(["preset=hrnet_w44_1280_fast"]), load_config(["preset=hrnet_w44_1280"])
    assert fast.models == base.models and fast.data.image_height == 1280
    assert fast.trainer.precision == "bf16-mixed" and fast.trainer.channels_last
    assert fast.trainer.compile and fast.trainer.compile_scope == "regional"
    assert fast.data.batch_size > base.data.batch_size and fast.data.num_workers >= base.data.num_workers
    assert base.trainer.precision == "32" and not base.trainer.compile  # the reproducibility block is untouched


def test_fast_preset_dry_run(capsys):
    from hrnet_sweep.cli import main

    assert main(["train", "preset=hrnet_w44_1280_fast", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "precision: bf16-mixed" in out and "compile_scope: regional" in out


@pytest.mark.integration
def test_training_run_with_compile_and_checkpointing_saves_eager_loadable_weights(synth_data, tmp_path, monkeypatch):
    from hrnet_sweep.pipeline.train import load_weights, run

    monkeypatch.setattr(speed, "prepare_model", functools.partial(speed.prepare_model, backend="aot_eager"))
    cfg = load_config(
        [
            *TINY,
            "data.image_height=128",
            "data.image_width=128",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.progress_bar=false",
            "logging.tensorboard=false",
            "data.num_folds=4",
            f"data.root={synth_data}",
            f"output_dir={tmp_path}",
            "run_name=fast",
            "trainer.max_epochs=1",
            "trainer.compile=true",
            "trainer.activation_checkpointing=true",
            f"trainer.compile_cache_dir={tmp_path / 'cache'}",
        ]
    )
    res = run(cfg)
    assert res.state == "finished", res.reason
    load_weights(build_model(cfg), res.last_ckpt)  # keys of the eager model: no _orig_mod prefix


def test_a_deep_copy_of_a_prepared_model_is_a_plain_model_of_its_own_weights(tmp_path):
    # an EMA or SWA copy must run its own weights, not call back into the original
    cfg = _cfg(tmp_path, "trainer.compile=true", "trainer.activation_checkpointing=true")
    torch.manual_seed(0)
    model = speed.prepare_model(build_model(cfg).train(), cfg, backend="aot_eager")
    twin = copy.deepcopy(model)
    assert not any(
        "forward" in vars(m) and not callable(getattr(vars(m)["forward"], "__func__", None)) for m in twin.modules()
    )
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    plain = build_model(cfg)
    plain.load_state_dict(twin.state_dict())
    x = _batch()[0]
    for m in (twin, plain):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x)["prob_logits"], plain(x)["prob_logits"])
