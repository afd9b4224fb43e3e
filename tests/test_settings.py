"""Every setting is checked where it enters: bad values give one line naming the key and the allowed range."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from core.cli import check_command_line, config_groups
from core.errors import UserError
from core.settings import check_settings
from metrics.evaluation import EVALUATE
from review.options import INFER
from tests.conftest import ROOT, run_script
from training.settings import TRAIN

RULES = {"train": TRAIN, "infer": INFER, "evaluate": EVALUATE}

BAD = [  # (script, override, text the message must contain)
    ("infer", "review.smoothing=0", "review.smoothing=0 is invalid: it must be a number > 0 and <= 1"),
    ("infer", "review.scope_every=0", "review.scope_every=0 is invalid"),
    ("infer", "review.overlay_size=[0,0]", "review.overlay_size=[0, 0] is invalid"),
    ("infer", "review.overlay_size=[641,480]", "even integers"),
    ("infer", "review.threshold=2", "review.threshold=2 is invalid: it must be a number > 0 and <= 1"),
    ("infer", "review.batch_size=0", "review.batch_size=0 is invalid"),
    ("infer", "review.crf=99", "review.crf=99 is invalid: it must be an integer >= 0 and <= 51"),
    ("infer", "review.key_frames=-1", "review.key_frames=-1"),
    ("infer", "review.abstain_below=1.5", "review.abstain_below=1.5"),
    ("infer", "precision=fp64", "precision='fp64' is invalid: it must be one of auto, fp32, bf16, fp16"),
    ("infer", "tta=maybe", "tta='maybe' is invalid: it must be true or false"),
    ("evaluate", "tta_views=v", "tta_views='v' is invalid: it must be one of h, hv, hs"),
    ("train", "data.resize=nope", "data.resize='nope' is invalid: it must be one of stretch, letterbox"),
    ("train", "data.batch_size=0", "data.batch_size=0 is invalid"),
    ("train", "data.size=100", "a multiple of 32"),
    ("train", "optim.optimizer.lr=-1", "optim.optimizer.lr=-1 is invalid: it must be a number > 0"),
    ("train", "loss.kind=nope", "loss.kind='nope' is invalid: it must be one of structure, dice_bce"),
    ("train", "trainer.max_epochs=-1", "trainer.max_epochs=-1 is invalid: it must be an integer >= 1"),
    ("train", "trainer.max_epochs=1.5", "must be an integer"),
    ("train", "trainer.ema.decay=1", "trainer.ema.decay=1 is invalid"),
    ("train", "trainer.freeze=everything", "trainer.freeze='everything'"),
    ("train", "data.val_fraction=1", "data.val_fraction=1 is invalid"),
    ("train", "model.head_inputs=pixels", "model.head_inputs='pixels'"),
    ("train", "trainer.multiscale=[0]", "trainer.multiscale=[0] is invalid"),
    ("train", "data.cv.folds=1", "data.cv.folds=1 is invalid"),
    ("evaluate", "batch_size=0", "batch_size=0 is invalid: it must be an integer >= 1"),
    ("evaluate", "n_boot=-5", "n_boot=-5 is invalid"),
    ("evaluate", "case_min_confidence=2", "case_min_confidence=2 is invalid"),
]


def _compose(script: str, overrides: list[str]) -> dict:
    """The configuration an entry script checks: composed, then resolved to plain dicts."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name=script, overrides=overrides), resolve=True)


@pytest.mark.parametrize("script,override,needle", BAD, ids=[f"{s}:{o}" for s, o, _ in BAD])
def test_bad_setting_is_named_with_its_allowed_range(script, override, needle):
    cfg = _compose(script, [override])
    with pytest.raises(UserError) as e:
        check_settings(cfg, RULES[script])
    assert needle in str(e.value)


@pytest.mark.parametrize("script", ["train", "infer", "evaluate"])
def test_defaults_and_every_experiment_pass(script):
    check_settings(_compose(script, []), RULES[script], closed=True)
    if script == "train":
        for exp in sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")):
            check_settings(
                _compose(
                    "train",
                    [f"experiment={exp}", "data.manifest=x.csv"] if exp == "hospital_heads" else [f"experiment={exp}"],
                ),
                TRAIN,
                closed=True,
            )
    data_configs = sorted(p.stem for p in (ROOT / "configs" / "data").glob("*.yaml"))
    for data in data_configs if script != "infer" else []:  # every data config, under both closed schemas
        extra = ["data.manifest=x.csv"] if data == "manifest" else []
        check_settings(_compose(script, [f"data={data}", *extra]), RULES[script], closed=True)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["input=/data/name", "with", "spaces.png"], "'with' is not a key=value setting"),
        (["input=/data/name with spaces.png"], "input: a value with spaces"),
        (["out_dir=/proc/forbidden"], "out_dir=/proc/forbidden cannot be created"),
    ],
)
def test_command_line_problems_are_explained(argv, needle):
    with pytest.raises(UserError, match="quoted|cannot be created") as e:
        check_command_line(argv)
    assert needle in str(e.value)
    check_command_line(["input='/data/name with spaces.png'", "-m", "data.cv.fold=0,1", "x=[a, b]"])
    # Hydra's own flags and their values pass (--cfg job, -cn NAME, --info defaults), as does --info alone
    check_command_line(["--cfg", "job", "-cn", "train", "--package", "trainer", "--info", "defaults", "a=1"])
    check_command_line(["--info", "a=1", "-c", "all", "--cfg=job"])
    with pytest.raises(UserError, match="'stray' is not a key=value"):
        check_command_line(["--info", "a=1", "stray"])
    clip = str(ROOT / "samples" / "clinicdb_seq6.mp4")
    with pytest.raises(UserError, match=f"to process it, write input={clip}"):
        check_command_line([clip])  # an existing file given without input=


@pytest.mark.parametrize(
    "args,needle",
    [  # one per script end to end; the table above covers every setting
        (["infer.py", "input=/tmp/name with spaces.png"], "must be quoted for Hydra"),
        (["train.py", "trainer.max_epochs=-1", "hydra.run.dir=/tmp/endolift-bad"], "trainer.max_epochs=-1"),
        (["evaluate.py", "batch_size=0", "out_dir=/tmp/endolift-bad"], "batch_size=0 is invalid"),
    ],
)
def test_entry_scripts_exit_2_with_one_line(args, needle):
    p = run_script(*args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


UNKNOWN = [  # (script, override, the message): train.py's and evaluate.py's schemas are closed like infer.py's
    ("train", "+trainer.max_epoch=3", "unknown setting trainer.max_epoch: did you mean trainer.max_epochs?"),
    ("train", "+data.batchsize=4", "unknown setting data.batchsize: did you mean data.batch_size?"),
    ("train", "+loss.min_lesion_fraction=0.1", "did you mean data.min_lesion_fraction?"),
    ("train", "+model.head_dropouts=0.1", "did you mean model.head_dropout?"),
    ("evaluate", "+batchsize=4", "unknown setting batchsize: did you mean batch_size?"),
    ("evaluate", "+case_min_frame=2", "did you mean case_min_frames?"),
]


@pytest.mark.parametrize("script,override,needle", UNKNOWN, ids=[f"{s}:{o}" for s, o, _ in UNKNOWN])
def test_unknown_key_is_refused_with_the_closest_one(script, override, needle):
    with pytest.raises(UserError, match="unknown setting") as e:
        check_settings(_compose(script, [override]), RULES[script], closed=True)
    assert needle in str(e.value)
    with pytest.raises(UserError) as e:  # on the command line too, before Hydra parses it
        check_command_line([override], RULES[script], groups=config_groups(ROOT / "configs"))
    assert needle in str(e.value)


def test_open_parts_are_the_users():
    """Keys that are the user's pass a closed schema: sources, label maps, heads, an optimizer's own arguments,
    config groups and Hydra's keys on the command line."""
    cfg = _compose(
        "train",
        [
            "experiment=smoke",
            "+optim.optimizer.betas=[0.9,0.99]",
            "+model.decoder.decoder_attention_type=scse",
            "data.label_source.fibrosis=proxy",
            "+data.train_sources.0.note=x",
        ],
    )
    check_settings(cfg, TRAIN, closed=True)
    argv = ["experiment=smoke", "debug=fast", "data=synthetic", "hydra/launcher=basic", "model.heads.x=[a,b]"]
    check_command_line(argv, TRAIN, groups=config_groups(ROOT / "configs"))
    check_command_line(["data=synthetic_cases", "sets=[x]", "data.test_sets.x=[]"], EVALUATE, groups={"data"})


def test_an_owners_rule_is_the_scripts_rule():
    """A rule is declared once, on the settings class beside the code that uses it, and reaches the script's check."""
    from dataclasses import fields

    from models.build import ARCHITECTURES, ModelSettings
    from models.losses import SEG_LOSSES, LossSettings
    from models.predictor_settings import PredictorSettings

    def rule(cls: type, name: str):
        return {f.name: f.metadata["rule"] for f in fields(cls)}[name]

    assert TRAIN["model.arch"] is rule(ModelSettings, "arch") and TRAIN["model.arch"].options == ARCHITECTURES
    assert TRAIN["loss.kind"] is rule(LossSettings, "kind") and TRAIN["loss.kind"].options == tuple(SEG_LOSSES)
    assert EVALUATE["backend"] is rule(PredictorSettings, "backend")
    with pytest.raises(UserError, match=f"model.arch='nope' is invalid: it must be one of {', '.join(ARCHITECTURES)}"):
        check_settings(_compose("train", ["model.arch=nope"]), TRAIN, closed=True)


def test_review_options_check_themselves():
    """A notebook user who builds ReviewOptions by hand gets infer.py's one-line message, and the table infer.py
    checks is built from the same fields."""
    from dataclasses import fields

    from review.options import ReviewOptions

    with pytest.raises(UserError, match="review.smoothing=0 is invalid: it must be a number > 0 and <= 1"):
        ReviewOptions(smoothing=0)
    with pytest.raises(UserError, match=r"review.overlay_size=\[641, 480\] is invalid: .*even integers"):
        ReviewOptions(overlay_size=[641, 480])
    with pytest.raises(UserError, match="review.deid_check='never' is invalid: it must be one of fail, warn"):
        ReviewOptions(deid_check="never")
    assert ReviewOptions(smoothing=1.0, overlay_size=(192, 144)).smoothing == 1.0
    assert all(INFER[f"review.{f.name}"] is f.metadata["rule"] for f in fields(ReviewOptions))


def test_infer_settings_are_built_typed_at_the_door():
    """infer.py hands the review code InferSettings: the composed defaults build, Hydra's own keys are let through
    without becoming settings, and a configuration without a review group is one UserError, not a traceback."""
    from review.options import InferSettings, ReviewOptions, read_infer_settings

    s = read_infer_settings(_compose("infer", ["review.threshold=0.4", "+_target_=x", "+review._target_=x"]))
    assert isinstance(s, InferSettings) and isinstance(s.review, ReviewOptions) and s.review.threshold == 0.4
    with pytest.raises(UserError, match="review=None is invalid"):
        read_infer_settings(_compose("infer", ["review=null"]))
    partial = _compose("infer", [])
    del partial["out_dir"]
    with pytest.raises(UserError, match="configs/infer.yaml: .*out_dir"):
        read_infer_settings(partial)
