import pytest
import torch

from hrnet_sweep.config import load_config
from hrnet_sweep.dbnet.loss import DBLoss
from hrnet_sweep.dbnet.model import DBNet, build_model

pytestmark = pytest.mark.model


@pytest.mark.parametrize("backbone", ["hrnet_w18_small", "resnet18"])
@pytest.mark.parametrize("decoder", ["fpn", "asf"])
def test_forward_backward(backbone, decoder):
    torch.manual_seed(0)
    model = DBNet(backbone, pretrained=False, decoder=decoder, inner_channels=32)
    x = torch.randn(2, 3, 96, 128)
    out = model(x)
    assert set(out) == {"prob_logits", "thresh", "binary"}
    for v in out.values():
        assert v.shape == (2, 1, 96, 128)
    gt = (torch.rand(2, 96, 128) > 0.8).float()
    batch = {
        "prob_map": gt,
        "prob_mask": torch.ones_like(gt),
        "thresh_map": torch.rand_like(gt) * 0.4 + 0.3,
        "thresh_mask": torch.ones_like(gt),
    }
    parts = DBLoss()(out, batch)
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"])
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    model.eval()
    prob = model.predict_prob(x)
    assert prob.shape == (2, 96, 128) and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_hrnet_uses_stride_4_to_32_features_from_feature_info():
    model = DBNet("hrnet_w18_small", pretrained=False, inner_channels=32)
    assert model.feature_pos == [1, 2, 3, 4]
    red = model.backbone.feature_info.reduction()
    assert [red[i] for i in model.feature_pos] == [4, 8, 16, 32]


def test_build_model_from_preset_and_local_weights(tmp_path):
    cfg = load_config(["preset=hrnet_w18_small_cpu"])
    model = build_model(cfg)
    # a local weights file for machines without internet
    path = tmp_path / "w.pth"
    torch.save(DBNet("resnet18", pretrained=False).backbone.state_dict(), path)
    m2 = DBNet("resnet18", pretrained=str(path), inner_channels=32)
    for k, v in torch.load(path).items():
        if k in m2.backbone.state_dict():
            assert torch.equal(m2.backbone.state_dict()[k], v)
    assert isinstance(model, DBNet)


def test_loss_terms_behave():
    loss = DBLoss(prob_weight=1, thresh_weight=0, binary_weight=0)
    gt = torch.zeros(1, 16, 16)
    gt[0, 4:8, 4:8] = 1
    perfect = {"prob_logits": (gt * 20 - 10)[:, None]}
    wrong = {"prob_logits": (10 - gt * 20)[:, None]}
    batch = {"prob_map": gt, "prob_mask": torch.ones_like(gt)}
    assert loss(perfect, batch)["loss"] < 1e-3 < loss(wrong, batch)["loss"]
    # no text at all: hardest negatives still count
    empty = {"prob_map": torch.zeros(1, 16, 16), "prob_mask": torch.ones(1, 16, 16)}
    assert loss({"prob_logits": torch.full((1, 1, 16, 16), 3.0)}, empty)["loss"] > 1.0
