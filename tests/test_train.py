from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from models.build import build_model
from tests.conftest import ROOT, run_script
from training.resume import load_train_state

CONFIGS = ROOT / "configs"


def _epochs(run_dir):
    with (run_dir / "metrics.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "augment", "loss", "optim", "data", "experiment", "debug"])
def test_every_config_option_composes_and_instantiates(group, tmp_path):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for option in _options(group):
            overrides = [f"{group}={option}", f"paths.cache_dir={tmp_path}"]
            if group == "data" and option == "manifest":
                overrides.append("data.manifest=x.csv")
            cfg = compose(config_name="train", overrides=overrides)
            OmegaConf.resolve(cfg)
            model_cfg = OmegaConf.to_container(cfg.model)
            model_cfg["weights"] = None
            model = build_model(**model_cfg)
            if group == "model":  # one model config; the architecture is a key
                from models.build import ARCHITECTURES

                for arch in ARCHITECTURES:
                    build_model(**dict(model_cfg, arch=arch, decoder={}))
            [instantiate(t) for t in cfg.augment.train]
            loss = instantiate(cfg.loss)
            opt = instantiate(cfg.optim.optimizer)(params=model.parameters())
            sched = instantiate(cfg.optim.scheduler)(opt, total_steps=10, warmup_steps=2)
            assert isinstance(opt, torch.optim.Optimizer) and sched.get_last_lr()
            assert callable(loss)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for name in ("infer", "evaluate"):
            assert compose(config_name=name).out_dir


def test_warmup_cosine_schedule_shape():
    from training.loop import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] > 0.1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train.py", "no_such_key=1"], "no_such_key"),
        (["train.py", "model=nope"], "model"),
        (
            ["train.py", "experiment=smoke", "model.arch=nope", "hydra.run.dir=/tmp/endolift-bad"],
            "model.arch='nope' is invalid",
        ),
        (["train.py", "paths.shared_data=/nonexistent", "hydra.run.dir=/tmp/endolift-bad"], "/nonexistent"),
        (["infer.py", "input=/nonexistent/clip.mp4", "out_dir=/tmp/endolift-bad"], "/nonexistent/clip.mp4"),
    ],
)
def test_bad_settings_exit_2_without_traceback(args, needle):
    p = run_script(*args)
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle in p.stderr
    assert "Traceback" not in p.stderr


def test_two_process_ddp_smoke_run_on_cpu(tmp_path):
    """torchrun with 2 CPU processes (gloo): both shard the data, rank 0 alone writes checkpoints and logs."""
    run = tmp_path / "ddp"
    p = run_script(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        "experiment=smoke",
        f"hydra.run.dir={run}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "data.batch_size=4",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert _epochs(run) == [1]
    card = json.loads((run / "checkpoints" / "last.json").read_text())
    assert card["resume"]["epoch"] == 1
    # the 24 training frames are split between the ranks: 12 each -> 3 steps of 4, where one process takes 6
    state = load_train_state(run / "checkpoints" / "last")
    assert float(state[next(k for k in state if k.endswith("/step"))]) == 3.0


def test_epoch_sampler_shards_and_is_a_function_of_seed_and_epoch():
    from training.loaders import EpochSampler

    shards = [EpochSampler(10, shuffle=True, seed=1, world_size=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 5 and sorted(x - 30 for x in a + b) == list(range(10))  # disjoint, complete
    again = EpochSampler(10, shuffle=True, seed=1, world_size=2, rank=0)
    again.set_epoch(3)
    assert list(again) == a
    again.set_epoch(4)
    assert [x - 40 for x in again] != [x - 30 for x in a]
    odd = [list(EpochSampler(5, shuffle=False, seed=0, world_size=2, rank=r)) for r in (0, 1)]
    assert odd == [[0, 2, 4], [1, 3, 0]]  # padded to equal shares, like DistributedSampler


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


# train.py as a user runs it, except that the process kills itself (SIGKILL, nothing flushed or cleaned up) when
# epoch 2 is about to be saved: a run interrupted after epoch 1's checkpoint, at the same point every time
KILLED_IN_EPOCH_2 = """
import os, runpy, signal, sys
import training.resume

save_epoch = training.resume.save_epoch

def save_or_die(*args, epoch, **kwargs):
    if epoch == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return save_epoch(*args, epoch=epoch, **kwargs)

training.resume.save_epoch = save_or_die
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_training_is_reproducible_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    """Same seed -> identical tensors (augmentation included); SIGKILL in epoch 2 (after its steps, before its save),
    resume from the last checkpoint -> the same weights as the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    common = [
        "experiment=smoke",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false",
        "trainer.max_epochs=2",
        "trainer.n_boot=10",
    ]
    a, d = tmp_path / "a", tmp_path / "d"
    for run in (a, d):
        p = run_script("train.py", *common, f"hydra.run.dir={run}")
        assert p.returncode == 0, p.stderr[-2000:]
    wa, wd = _weights(a), _weights(d)
    assert wa.keys() == wd.keys() and all(torch.equal(wa[k], wd[k]) for k in wa)
    assert _epochs(a) == [1, 2]  # what a run leaves
    for f in ("best.safetensors", "best.json", "last.safetensors", "last.json", "last.state.safetensors"):
        assert (a / "checkpoints" / f).is_file()
    card = json.loads((a / "checkpoints" / "last.json").read_text())
    assert card["heads"]["fibrosis"]["label_source"] == "synthetic" and card["heads"]["fibrosis"]["kind"] == "ordinal"
    assert card["heads"]["fibrosis"]["validated_on_real"] is False
    assert card["resume"]["epoch"] == 2 and card["input"]["size"] == 64
    assert card["training"]["command"] == " ".join(["python train.py", *common])  # the recipe (hydra.* left out)
    assert any(k.startswith("optim/") for k in load_train_state(a / "checkpoints" / "last"))

    b = tmp_path / "b"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_EPOCH_2, *common, f"hydra.run.dir={b}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    card = b / "checkpoints" / "last.json"
    assert json.loads(card.read_text())["resume"]["epoch"] == 1  # epoch 2 trained, then killed before its save
    c = tmp_path / "c"
    p = run_script("train.py", *common, f"hydra.run.dir={c}", f"trainer.resume={b / 'checkpoints' / 'last'}")
    assert p.returncode == 0, p.stderr[-2000:]
    wc = _weights(c)
    # continues the epoch count instead of starting over, in one log: the earlier run's epoch 1 is copied in
    assert _epochs(c) == [1, 2] and json.loads((c / "resumed_from.json").read_text())
    assert list((c / "tb").glob("events.*"))
    assert json.loads((c / "checkpoints" / "best.json").read_text())["epoch"] in (1, 2)  # best travels along
    state = load_train_state(c / "checkpoints" / "last")  # the optimiser continued: 3 steps an epoch
    assert float(state[next(k for k in state if k.endswith("/step"))]) == 6.0
    assert all(torch.equal(wa[k], wc[k]) for k in wa)
