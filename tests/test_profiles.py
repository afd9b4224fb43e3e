"""Profiles (configs/profile/): one name picks how the model runs (checkpoint, input size, flip TTA, reliability);
the outputs say what ran, and heads run at the size they were validated at whatever the mask's size."""

from pathlib import Path

import numpy as np
import pytest

from data.synthetic import synthetic_frame
from models.predictor import Predictor
from tests.conftest import ROOT

SHIPPED = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"


def test_an_input_size_other_than_the_cards_must_be_a_multiple_of_32(tiny_checkpoint):
    from core.errors import UserError

    trained = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    bigger = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", input_size=trained.size + 32)
    assert bigger.size == trained.size + 32 and bigger.run_settings()["trained_size"] == trained.size
    frame = synthetic_frame(np.random.default_rng(0), (trained.size, trained.size))["image"]
    (p,) = bigger.predict([frame], full_size=False)
    assert p.prob.shape == (trained.size + 32, trained.size + 32)  # the network ran at the asked size
    with pytest.raises(UserError, match="input_size=100: give a multiple of 32"):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", input_size=100)


def test_heads_run_at_the_size_they_were_validated_at_whatever_the_mask_size():
    frames = [synthetic_frame(np.random.default_rng(i), (300, 380))["image"] for i in range(2)]
    trained = Predictor.from_checkpoint(SHIPPED, device="cpu", precision="fp32")
    bigger = Predictor.from_checkpoint(SHIPPED, device="cpu", precision="fp32", input_size=trained.size + 64, tta=True)
    assert trained.heads == ["small_sessile"]  # the shipped head, cleared for display at the card's size
    for a, b in zip(trained.predict(frames, full_size=False), bigger.predict(frames, full_size=False)):
        assert b.prob.shape == (trained.size + 64,) * 2 and a.prob.shape == (trained.size,) * 2
        np.testing.assert_allclose(b.heads["small_sessile"], a.heads["small_sessile"], atol=1e-5)  # same head view


def test_the_profiles_differ_only_in_how_the_model_runs():
    import os

    from hydra import compose, initialize_config_dir

    from review.runs import PROFILE_KEYS

    with initialize_config_dir(os.path.abspath("configs"), version_base=None):
        fast, accurate = (compose("infer", overrides=[f"profile={p}"]) for p in ("fast", "accurate"))
        assert compose("infer").profile == "accurate" and compose("evaluate").profile == "accurate"
        assert compose("infer", overrides=["profile=fast", "tta=true"]).tta is True  # the command line wins
    assert fast.tta is False and fast.reliability is False  # one model pass a frame: live video
    assert accurate.reliability is True
    same = {k for k in fast if k not in PROFILE_KEYS + ("profile",)}
    assert all(fast[k] == accurate[k] for k in same)


def test_an_exported_checkpoint_names_the_profile_it_is_shipped_for(tmp_path):
    from models.build import build_model
    from models.checkpoint import read_card, save_checkpoint
    from models.export import main as export_main
    from tests.conftest import tiny_card

    card = tiny_card() | {"training": {"precision": "bf16", "command": "python train.py experiment=smoke"}}
    src = tmp_path / "run" / "best"
    src.parent.mkdir()
    save_checkpoint(src, build_model(**card["model"]), card)  # what a training run leaves
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,val/dice\n1,0.5\n2,0.6\n")
    dst = tmp_path / "shipped" / "m"
    dst.parent.mkdir()
    args = ["--src", str(src), "--dst", str(dst), "--train-log", str(log), "--wall-hours", "0.1"]
    export_main([*args, "--profile", "fast"])
    assert read_card(dst).extra["profile"] == "fast"
    assert "Shipped for `profile=fast` (`configs/profile/fast.yaml`)." in (dst.parent / "MODEL_CARD.md").read_text()
    run = Predictor.from_checkpoint(dst, device="cpu", precision="fp32").run_settings()
    assert run["checkpoint_profile"] == "fast" and run["profile"] is None  # shipped for fast; this run chose none
    with pytest.raises(SystemExit):  # only a profile configs/profile/ has
        export_main([*args, "--profile", "fastest"])
    export_main(args)  # no profile: the card says nothing about one
    assert "profile" not in read_card(dst).extra and "Shipped for" not in (dst.parent / "MODEL_CARD.md").read_text()
    # a second checkpoint shipped beside it, for the other profile: MODEL_CARD.md has a section for each, kept when
    # either is exported again or re-rendered (--card-only)
    export_main([*args[:2], "--dst", str(dst.parent / "n"), *args[4:], "--profile", "accurate"])
    export_main([*args, "--profile", "fast"])
    export_main(["--dst", str(dst), "--card-only"])
    md = (dst.parent / "MODEL_CARD.md").read_text()
    assert md.count("# Model card: ") == 2 and md.index("# Model card: m\n") < md.index("# Model card: n\n")
    assert "Shipped for `profile=fast`" in md and "Shipped for `profile=accurate`" in md


def test_the_profile_label_names_what_was_changed_not_how_it_was_spelled():
    import os

    from hydra import compose, initialize_config_dir

    from review.runs import profile_label

    with initialize_config_dir(os.path.abspath("configs"), version_base=None):
        same = compose("infer", overrides=[f"checkpoint={SHIPPED}/"])  # the profile's checkpoint, spelled absolute
        other = compose("infer", overrides=["profile=fast", "checkpoint=/models/other", "reliability=true"])
    assert profile_label(same.profile, same) == "accurate"
    assert profile_label(other.profile, other) == "fast, modified: checkpoint=other, reliability=True"


def test_an_ensemble_averages_its_members_mask_logits_and_keeps_the_checkpoints_heads(tmp_path):
    """ensemble=[...]: the mask is the sigmoid of the mean of every member's logits (each model differs here), with
    flip TTA too; the heads are the checkpoint's alone; a member trained on another input is refused by name."""
    import torch

    from core.errors import UserError
    from models.build import build_model
    from models.checkpoint import save_checkpoint
    from tests.conftest import tiny_card

    heads = {"small_sessile": ["no", "yes"]}
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        card = tiny_card(heads=heads if seed == 0 else None)
        paths.append(tmp_path / f"m{seed}")
        save_checkpoint(paths[-1], build_model(**card["model"]), card | {"name": f"m{seed}"})
    frames = [synthetic_frame(np.random.default_rng(i), (70, 90))["image"] for i in range(2)]

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    for tta in (False, True):
        alone = [Predictor.from_checkpoint(p, device="cpu", precision="fp32", tta=tta) for p in paths]
        ens = Predictor.from_checkpoint(paths[0], device="cpu", precision="fp32", tta=tta, ensemble=map(str, paths[1:]))
        ran = ens.run_settings()["ensemble"]
        assert [(m["name"], m["path"]) for m in ran] == [("m1", str(paths[1])), ("m2", str(paths[2]))]
        assert all(m["save_id"] for m in ran)  # what ran, told apart from other checkpoints of the same name
        got = ens.predict(frames, full_size=False)
        each = [a.predict(frames, full_size=False) for a in alone]
        for i, g in enumerate(got):
            expected = 1 / (1 + np.exp(-np.mean([logit(e[i].prob) for e in each], axis=0)))
            np.testing.assert_allclose(g.prob, expected, atol=1e-4)
            assert not np.allclose(g.prob, each[0][i].prob, atol=1e-3)  # the members did change the mask
            np.testing.assert_allclose(g.heads["small_sessile"], each[0][i].heads["small_sessile"], atol=1e-6)
    other = tiny_card()
    other["input"] = other["input"] | {"size": other["input"]["size"] + 32}
    save_checkpoint(tmp_path / "big", build_model(**other["model"]), other | {"name": "big"})
    with pytest.raises(UserError, match="ensemble member big: input size"):
        Predictor.from_checkpoint(paths[0], device="cpu", ensemble=[str(tmp_path / "big")])
    with pytest.raises(UserError, match="backend=torch only"):
        Predictor.from_checkpoint(paths[0], backend="onnxruntime", ensemble=[str(paths[1])])
    with pytest.raises(UserError, match=f"ensemble member {tmp_path / 'gone'}: checkpoint card not found"):
        Predictor.from_checkpoint(paths[0], device="cpu", ensemble=[str(tmp_path / "gone")])
    assert Predictor.from_checkpoint(paths[0], device="cpu", ensemble=[]).members == []  # [] is none, as null


def two_models_and_frames(tmp_path):
    """Two tiny checkpoints (the first with a head) and two synthetic frames, for the TTA and ensemble tests."""
    import torch

    from models.build import build_model
    from models.checkpoint import save_checkpoint
    from tests.conftest import tiny_card

    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        card = tiny_card(heads={"small_sessile": ["no", "yes"]} if seed == 0 else None)
        paths.append(tmp_path / f"m{seed}")
        save_checkpoint(paths[-1], build_model(**card["model"]), card | {"name": f"m{seed}"})
    frames = [synthetic_frame(np.random.default_rng(i), (70, 90))["image"] for i in range(2)]
    return paths, frames


def test_tta_views_hv_averages_the_four_flips_of_every_member(tmp_path):
    """tta_views=hv: the mask is the sigmoid of the mean logits of the frame as is, mirrored, upside down and both
    (each mapped back), over the ensemble's members too; the heads keep the frame's own view; a bad value is named."""
    from core.errors import UserError

    paths, frames = two_models_and_frames(tmp_path)
    flips = [lambda f: f, lambda f: f[:, ::-1], lambda f: f[::-1], lambda f: f[::-1, ::-1]]  # each its own inverse

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    alone = [Predictor.from_checkpoint(p, device="cpu", precision="fp32") for p in paths]
    ens = Predictor.from_checkpoint(
        paths[0], device="cpu", precision="fp32", tta=True, tta_views="hv", ensemble=[str(paths[1])]
    )
    hflip = Predictor.from_checkpoint(paths[0], device="cpu", precision="fp32", tta=True, ensemble=[str(paths[1])])
    got, two = ens.predict(frames, full_size=False), hflip.predict(frames, full_size=False)
    for i, frame in enumerate(frames):
        seen = []  # every member's logits of every flipped view, flipped back
        for a in alone:
            for f in flips:
                seen.append(f(logit(a.predict([np.ascontiguousarray(f(frame))], full_size=False)[0].prob)))
        expected = 1 / (1 + np.exp(-np.mean(seen, axis=0)))
        np.testing.assert_allclose(got[i].prob, expected, atol=1e-4)
        assert not np.allclose(got[i].prob, two[i].prob, atol=1e-3)  # the upside-down views did count
        own = alone[0].predict([frame], full_size=False)[0].heads["small_sessile"]
        np.testing.assert_allclose(got[i].heads["small_sessile"], own, atol=1e-6)
    assert ens.run_settings()["tta_views"] == "hv" and alone[0].run_settings()["tta_views"] is None
    with pytest.raises(UserError, match="tta_views='v': use h or hv or hs"):
        Predictor.from_checkpoint(paths[0], device="cpu", tta=True, tta_views="v")


def test_tta_views_hs_averages_the_frame_and_its_mirror_at_three_scales_over_every_member(tmp_path):
    """tta_views=hs: the mean logits of the frame and its mirror at the input size S and at 0.75 S and 1.25 S
    (multiples of 32), each mapped back to S x S, over the ensemble's members; the heads keep the frame's own view."""
    import torch
    import torch.nn.functional as F

    from data.transforms import normalise_batch
    from models.predictor import resize_frames
    from models.predictor_settings import scaled_sizes

    assert scaled_sizes(288, [0.75, 1.25]) == [224, 352] and scaled_sizes(128, [0.75, 1.25]) == [96, 160]
    paths, frames = two_models_and_frames(tmp_path)
    kw = {"device": "cpu", "precision": "fp32", "input_size": 128}
    alone = [Predictor.from_checkpoint(p, **kw) for p in paths]
    hs = Predictor.from_checkpoint(paths[0], tta=True, tta_views="hs", ensemble=[str(paths[1])], **kw)
    h = Predictor.from_checkpoint(paths[0], tta=True, ensemble=[str(paths[1])], **kw)
    got, mirror_only = hs.predict(frames, full_size=False), h.predict(frames, full_size=False)
    card = alone[0].card
    x = normalise_batch(resize_frames(frames, 128), mean=card.input.mean, std=card.input.std)
    seen = []
    with torch.no_grad():
        for a in alone:
            for size in (128, 96, 160):
                for mirror in (False, True):
                    v = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
                    v = v.flip(3) if mirror else v
                    out = a.model(v, None)["mask"].float()
                    out = out.flip(3) if mirror else out
                    seen.append(F.interpolate(out, size=(128, 128), mode="bilinear", align_corners=False))
    expected = torch.sigmoid(torch.stack(seen).mean(0))[:, 0].numpy()
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(got[i].prob, expected[i], atol=1e-4)
        assert not np.allclose(got[i].prob, mirror_only[i].prob, atol=1e-3)  # the other scales did count
        own = alone[0].predict([frame], full_size=False)[0].heads["small_sessile"]
        np.testing.assert_allclose(got[i].heads["small_sessile"], own, atol=1e-6)
    assert hs.run_settings()["tta_views"] == "hs"


def test_the_profile_label_names_ensemble_members_by_path():
    from review.runs import profile_label

    settings = {"checkpoint": str(SHIPPED), "input_size": None, "tta": True, "reliability": True}
    shipped = [str(SHIPPED.parent / "endolift_polyp_unet_mnv2_domain")]  # the profile's member, spelled absolute
    assert profile_label("accurate", settings | {"ensemble": shipped}) == "accurate"
    assert profile_label("accurate", settings | {"ensemble": []}) == "accurate, modified: ensemble=[]"
    got = profile_label("accurate", settings | {"ensemble": ["outputs/xc/domain/kvasir/checkpoints/best"]})
    assert got == "accurate, modified: ensemble=[outputs/xc/domain/kvasir/checkpoints/best]"


def test_the_report_line_names_each_ensemble_member_with_its_save_id():
    from review.summary import run_line

    run = {"profile": "accurate", "input_size": 288, "trained_size": 288, "tta": True, "reliability": True}
    member = {"name": "polyp_pranet", "save_id": "0123456789abcdef", "path": "outputs/full/domain/checkpoints/best"}
    assert run_line(run) == "profile accurate: input 288 px, flip TTA, reliability scored"
    hv = run_line(run | {"tta_views": "hv"})
    assert hv == "profile accurate: input 288 px, flip TTA (mirrored, upside down and both), reliability scored"
    hs = run_line(run | {"tta_views": "hs"})
    assert "flip and multi-scale TTA (mirrored; also at 0.75x and 1.25x the input size)" in hs
    assert run_line(run | {"ensemble": [member]}).endswith(
        "averaged with outputs/full/domain/checkpoints/best (polyp_pranet, save 01234567)"
    )


def test_another_checkpoint_runs_without_the_profiles_ensemble_members(tmp_path, monkeypatch):
    """A profile's ensemble members are its checkpoint's partners: checkpoint=OTHER alone drops them (OTHER may not
    even share their input size); an ensemble given with it, or the profile's own checkpoint however spelled, keeps
    them; a profile without members is left alone."""
    import models.predictor_settings as ps

    (tmp_path / "accurate.yaml").write_text("checkpoint: ck/main\nensemble: [ck/partner]\ntta: true\n")
    (tmp_path / "fast.yaml").write_text("checkpoint: ck/main\nensemble: null\n")
    monkeypatch.setattr(ps, "PROFILE_DIR", tmp_path)
    base = {"profile": "accurate", "checkpoint": "ck/main", "ensemble": ["ck/partner"], "tta": True}
    assert ps.partnered_ensemble(base) == base
    assert ps.partnered_ensemble(base | {"checkpoint": str(Path("ck/main/").resolve())})["ensemble"] == ["ck/partner"]
    assert ps.partnered_ensemble(base | {"checkpoint": "mine"}) == base | {"checkpoint": "mine", "ensemble": None}
    assert ps.partnered_ensemble(base | {"checkpoint": "mine", "ensemble": "ck/partner"})["ensemble"] is None
    chosen = base | {"checkpoint": "mine", "ensemble": ["other"]}
    assert ps.partnered_ensemble(chosen) == chosen  # members asked for with it are kept
    fast = base | {"profile": "fast", "checkpoint": "mine", "ensemble": None}
    assert ps.partnered_ensemble(fast) == fast
    assert ps.partnered_ensemble(base | {"profile": "nope", "checkpoint": "mine"})["ensemble"] == ["ck/partner"]
    onnx = base | {"backend": "onnxruntime"}  # an ONNX file runs alone, the profile's own checkpoint too
    assert ps.partnered_ensemble(onnx) == onnx | {"ensemble": None}
    assert ps.partnered_ensemble(base | {"backend": "torch"})["ensemble"] == ["ck/partner"]


def test_a_cards_test_results_are_one_pass_of_the_checkpoint_alone(tmp_path):
    """models.export --metrics (and models.approve's evidence) refuse evaluate.py results computed with other
    checkpoints averaged in; export also refuses flip TTA results, naming the file and the command to run."""
    import json

    from core.errors import UserError
    from models.export import evaluated_results

    results = {"kvasir": {"segmentation": {"dice@0.5": 0.9}}}
    cases = {
        "plain": {"checkpoint": {"ensemble": [], "tta": False}},
        "ens": {"checkpoint": {"ensemble": [{"name": "m1", "path": "m1"}], "tta": False}},
        "tta": {"checkpoint": {"ensemble": [], "tta": True}},
    }
    paths = {}
    for name, doc in cases.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(doc | {"results": results}))
    assert evaluated_results(str(paths["plain"])) == results
    with pytest.raises(UserError, match=r"ens\.json was computed with other checkpoints averaged in.*profile=fast"):
        evaluated_results(str(paths["ens"]))
    with pytest.raises(UserError, match=r"tta\.json was computed with flip TTA.*evaluate\.py profile=fast"):
        evaluated_results(str(paths["tta"]))


def test_a_checkpoint_trained_on_letterboxed_frames_is_refused_not_run_stretched(tmp_path):
    """Inference resizes frames straight to S x S; a checkpoint trained with data.resize=letterbox (aspect kept,
    padded) would see other geometry than it learnt on, so it is refused by name instead of silently misread."""
    from core.errors import UserError
    from models.build import build_model
    from models.checkpoint import save_checkpoint
    from tests.conftest import tiny_card

    card = tiny_card()
    card["input"] = dict(card["input"], resize="letterbox")
    save_checkpoint(tmp_path / "lb", build_model(**card["model"]), card | {"name": "lb_model"})
    with pytest.raises(UserError, match="lb_model was trained with data.resize=letterbox.*data.resize=stretch"):
        Predictor.from_checkpoint(tmp_path / "lb", device="cpu")
