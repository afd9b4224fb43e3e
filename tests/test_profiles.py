"""Profiles (configs/profile/): one name picks how the model runs (checkpoint, input size, flip TTA, reliability);
the outputs say what ran, and an input size the displayed heads were not validated at is refused."""

import numpy as np
import pytest

from data.synthetic import synthetic_frame
from models.predictor import Predictor
from tests.test_infer import infer_in_process

SHIPPED = "checkpoints/endolift_polyp_unet_mnv2"


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


def test_review_refuses_an_input_size_the_displayed_heads_were_not_validated_at(tmp_path, synthetic_video):
    from core.errors import UserError

    # the shipped model's small_sessile head is cleared for display at 288 px
    with pytest.raises(UserError, match=r"input_size=320: the heads cleared for display \(small_sessile\)"):
        infer_in_process(
            f"input={synthetic_video}", f"out_dir={tmp_path / 'o'}", f"checkpoint={SHIPPED}", "input_size=320"
        )
    assert not (tmp_path / "o" / "summary.json").exists()


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
