"""Train a lesion-segmentation model (+ optional attribute heads).  python train.py experiment=polyp_pranet

Seeds, builds data/model/loss/optimiser from the Hydra config, runs the visible loop below, validates each epoch
(mean Dice at 0.5; head NLL when the segmenter is frozen), and writes best/last checkpoints (safetensors + JSON
card) under the Hydra run directory. With heads, the best checkpoint's heads are then temperature-scaled on the
validation split (training/finish.py); in a cross-validation fold (data.cv) the held-out fold is predicted
into oof.json for `python -m metrics.cv`. Multi-process: torchrun --nproc_per_node=N train.py ...
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.cli import config_groups, run_cli
from core.errors import guard_task
from core.settings import check_settings
from data.splits import split_summary, splits_for
from models.build import build_model
from models.card import training_card
from models.checkpoint import copy_checkpoint, git_commit
from models.heads import head_classes, parse_heads
from models.runtime import autocast, pick_device, seed_everything
from training.finish import finish_heads
from training.loaders import train_val_loaders
from training.logs import EpochMeter, log_epoch, open_run_logs
from training.loop import ModelEMA, init_distributed, rescale_batch, to_device, unwrap, wrap_distributed
from training.prepare import declare_labels, prepare_for_training
from training.resume import restore_training, save_epoch
from training.settings import TRAIN, TRAIN_WHERE
from training.validation import selection_score, validate


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, ema, *, device, cfg, epoch, rank) -> dict:
    model.train()
    meter = EpochMeter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=rank != 0 or not cfg.trainer.progress, leave=False)
    for step, batch in enumerate(bar):
        if cfg.trainer.max_steps_per_epoch and step >= cfg.trainer.max_steps_per_epoch:
            break
        b = to_device(batch, device, cfg.trainer.channels_last)
        if cfg.trainer.multiscale:  # one random scale per batch
            b = rescale_batch(b, cfg.trainer.multiscale, cfg.data.size)
        with autocast(device, cfg.trainer.precision):
            out = model(b["image"], b.get("covariates"))
        terms = loss_fn(out, b)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        if cfg.trainer.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.trainer.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        bar.set_postfix(**meter.add(terms, b["image"].shape[0]))
    return meter.stats() | {"lr": optimizer.param_groups[0]["lr"]}


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@guard_task
def main(cfg: DictConfig) -> float:
    resolved, commit = OmegaConf.to_container(cfg, resolve=True), git_commit()
    command = " ".join(["python train.py", *map(shlex.quote, HydraConfig.get().overrides.task)])
    check_settings(resolved, TRAIN, closed=True, where=TRAIN_WHERE)
    rank, local_rank, world = init_distributed()
    seed_everything(cfg.seed + rank)
    device = pick_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    heads, covs = head_classes(resolved["model"]["heads"]), list(resolved["model"]["covariates"])
    specs = parse_heads(resolved["model"]["heads"])
    kinds = {h: spec.kind for h, spec in specs.items()}
    data, cv = resolved["data"], resolved["data"]["cv"]
    declare_labels(data, heads=list(heads), select_on=cfg.trainer.select_on)
    train_recs, val_recs, heldout = splits_for(data, heads=heads, covariates=covs)
    parts = split_summary({"train": train_recs, "val": val_recs, "heldout": heldout})
    train_loader, val_loader = train_val_loaders(
        train_recs,
        val_recs,
        data,
        augment_train=[instantiate(t) for t in cfg.augment.train],
        augment_eval=[instantiate(t) for t in cfg.augment.eval],
        heads=list(heads),
        covariates=covs,
        world_size=world,
        rank=rank,
        seed=cfg.seed,
    )

    model = build_model(**resolved["model"])
    frozen = cfg.trainer.freeze == "segmentation"
    init = prepare_for_training(
        model,
        init_from=cfg.trainer.init_from,
        freeze=cfg.trainer.freeze,
        covariate_rows=[[r.covariates.get(c, float("nan")) for c in covs] for r in train_recs],
        input_size=cfg.data.size,
        resize=cfg.data.resize,
    )
    model = model.to(device, memory_format=torch.channels_last if cfg.trainer.channels_last else torch.preserve_format)
    loss_fn = instantiate(
        cfg.loss,
        heads=resolved["model"]["heads"],
        segmentation=not frozen,
        min_lesion_fraction=cfg.data.min_lesion_fraction,  # the informative-frame rule's, recorded in the card
    )
    optimizer = instantiate(cfg.optim.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    steps = min(len(train_loader), cfg.trainer.max_steps_per_epoch or len(train_loader))
    scheduler = instantiate(cfg.optim.scheduler)(
        optimizer, total_steps=steps * cfg.trainer.max_epochs, warmup_steps=steps * cfg.optim.warmup_epochs
    )
    ema = ModelEMA(model, cfg.trainer.ema.decay) if cfg.trainer.ema.enabled else None
    start_epoch, best = 1, float("-inf")  # any first score wins: -(head NLL) is below -1 for 3+ classes
    ckpt_dir = (out_dir := Path(HydraConfig.get().runtime.output_dir)) / "checkpoints"
    if cfg.trainer.resume:
        start_epoch, best = restore_training(cfg.trainer.resume, model, optimizer, scheduler, ema)
        if rank == 0:  # the best epoch so far travels with the run
            copy_checkpoint(Path(cfg.trainer.resume).with_name("best"), ckpt_dir / "best")
    model = wrap_distributed(model, device, local_rank, world)

    writer = None
    if rank == 0:
        splits = {"group": data.get("group", "column"), "cv": cv, "parts": parts}
        writer = open_run_logs(out_dir, splits=splits, resume=cfg.trainer.resume, start_epoch=start_epoch)
        print(
            f"train {len(train_recs)} / val {len(val_recs)} / held-out fold {len(heldout)} images, {steps} "
            f"steps/epoch, device {device}, precision {cfg.trainer.precision}, run dir {out_dir}",
            flush=True,
        )
    for epoch in range(start_epoch, cfg.trainer.max_epochs + 1):
        train_loader.sampler.set_epoch(epoch)
        # each epoch's randomness (dropout, multi-scale) from (seed, rank, epoch): a resumed run continues exactly
        seed_everything((cfg.seed + rank) * 100_003 + epoch)
        stats = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, ema, device=device, cfg=cfg, epoch=epoch, rank=rank
        )
        eval_model = unwrap(model)
        backup = ema.copy_to(eval_model) if ema is not None else None
        if val_loader is not None and rank == 0:
            stats.update(
                validate(
                    eval_model,
                    val_loader,
                    device=device,
                    channels_last=cfg.trainer.channels_last,
                    precision=cfg.trainer.precision,
                    kinds=kinds,
                )
            )
        if rank == 0:
            card = training_card(
                resolved,
                epoch=epoch,
                metrics=stats,
                records={"train": train_recs, "val": val_recs},
                heads=specs,
                device=str(device),
                commit=commit,
                init_from=init,
                command=command,
            )
            best = save_epoch(
                ckpt_dir,
                eval_model,
                card,
                score=selection_score(stats, heads_only=frozen, select_on=cfg.trainer.select_on),
                best=best,
                ema_backup=backup,
                optimizer=optimizer,
                scheduler=scheduler,
                ema=ema,
                epoch=epoch,
            )
            log_epoch(out_dir / "metrics.csv", writer, epoch, stats)
        elif backup is not None:
            eval_model.load_state_dict(backup)
    if writer is not None:
        writer.close()
    failed = best == float("-inf")  # every score NaN (a diverged run): no best checkpoint; a sweep marks it failed
    if failed and rank == 0:
        print("warning: no epoch gave a finite validation score; no best checkpoint was written", file=sys.stderr)
    if rank == 0 and heads and not failed:  # temperature scaling on validation; a CV fold's held-out predictions
        finish_heads(
            ckpt_dir / "best",
            val_recs,
            heldout,
            oof=out_dir / "oof.json",
            variant=cfg.model.head_inputs,
            cv=cv,
            splits=parts,
            group_unit="frame" if data.get("group") == "frame" else "patient",
            device=cfg.trainer.device,
            n_boot=cfg.trainer.n_boot,
            min_frames=cfg.data.case_min_frames,
            progress=cfg.trainer.progress,
        )
    if world > 1:
        torch.distributed.destroy_process_group()
    return float("nan") if failed else best


if __name__ == "__main__":
    run_cli(main, schema=TRAIN, where=TRAIN_WHERE, groups=config_groups(Path(__file__).parent / "configs"))
