"""Train a lesion-segmentation model (+ optional attribute heads).  python train.py experiment=polyp_pranet

Seeds, builds data/model/loss/optimiser from the Hydra config, runs the visible loop below, validates each epoch
(mean Dice at 0.5; head NLL when the segmenter is frozen), and writes best/last checkpoints (safetensors + JSON
card) under the Hydra run directory. With heads, the best checkpoint's heads are then temperature-scaled on the
validation split (models/calibration.py); in a cross-validation fold (data.cv) the held-out fold is predicted
into oof.json for `python -m metrics.cv`. Multi-process: torchrun --nproc_per_node=N train.py ...
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.errors import UserError, guard_task, run_cli
from core.files import clean_stale_partials, write_json_atomic
from core.settings import TRAIN, check_settings
from data.loaders import train_val_loaders
from data.splits import split_summary, splits_for
from metrics.basic import selection_score, validate
from models import checkpoint as ckpt
from models.build import build_model, prepare_for_training
from models.heads import head_classes, parse_heads
from models.runtime import (
    ModelEMA,
    autocast,
    init_distributed,
    log_epoch,
    pick_device,
    seed_everything,
    to_device,
    unwrap,
)


def train_one_epoch(model, loader, loss_fn, optimizer, scheduler, ema, *, device, cfg, epoch, rank) -> dict:
    model.train()
    sums: dict[str, float] = {}
    n_images, n_steps, t0 = 0, 0, time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=rank != 0 or not cfg.trainer.progress, leave=False)
    for step, batch in enumerate(bar):
        if cfg.trainer.max_steps_per_epoch and step >= cfg.trainer.max_steps_per_epoch:
            break
        b = to_device(batch, device, cfg.trainer.channels_last)
        if cfg.trainer.multiscale:  # one random scale per batch, kept a multiple of 32
            rate = float(cfg.trainer.multiscale[torch.randint(len(cfg.trainer.multiscale), ()).item()])
            side = max(32, int(round(cfg.data.size * rate / 32)) * 32)
            if side != b["image"].shape[-1]:
                b["image"] = F.interpolate(b["image"], size=(side, side), mode="bilinear", align_corners=False)
                b["mask"] = (F.interpolate(b["mask"], size=(side, side), mode="bilinear") > 0.5).float()
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
        n_images += b["image"].shape[0]
        n_steps += 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        rate_s = n_images / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{sums['total'] / n_steps:.4f}", img_s=f"{rate_s:.1f}")
    stats = {f"train/{k}": v / max(1, n_steps) for k, v in sums.items()}
    stats["train/images_per_s"] = n_images / max(1e-9, time.perf_counter() - t0)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    return stats


def declare_labels(data: dict, *, heads: list[str], select_on: str | None) -> None:
    """Check the run's label declarations before any work: a head's labels are ``real`` only when a named person
    says so on this run (data.label_declared_by), never by a config default; the date is recorded in the card."""
    from models.card import LABEL_SOURCES

    sources = data.get("label_source") or {}
    for h, src in sources.items():
        if src not in LABEL_SOURCES:
            raise UserError(f"data.label_source.{h}={src!r} is invalid: it must be one of {', '.join(LABEL_SOURCES)}")
    real = [h for h, src in sources.items() if src == "real"]
    by = data.get("label_declared_by")
    if real and not (isinstance(by, str) and by.strip()):
        raise UserError(
            f"data.label_source declares {', '.join(real)} real (clinicians' annotation): add "
            "data.label_declared_by='YOUR NAME', who vouches for the labels (recorded in the card with the date)"
        )
    if real:
        import datetime as dt

        data["label_declared_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if select_on not in (None, "all") and select_on not in heads:
        raise UserError(f"trainer.select_on={select_on!r} is not a head of this model ({', '.join(heads) or 'none'})")


def continue_logs(resume: str | Path, out_dir: Path, *, start_epoch: int) -> str:
    """A resumed run keeps one history: its own folder's metrics.csv starts with the earlier run's rows for the
    epochs before ``start_epoch`` and its tb/ with the earlier run's TensorBoard event files (the writer then purges
    their steps from ``start_epoch`` on, the epochs this run redoes), so that one folder holds the whole run; the
    earlier folder is left as it was, and resumed_from.json names it. Returns the line train.py prints."""
    import shutil

    from core.files import atomic_write

    resume = Path(resume)
    earlier = resume.parent.parent if resume.parent.name == "checkpoints" else resume.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    old_csv = earlier / "metrics.csv"
    if old_csv.is_file():
        lines = old_csv.read_text().splitlines(keepends=True)

        def before(line: str) -> bool:
            first = line.split(",", 1)[0].strip()
            return first.isdigit() and int(first) < start_epoch

        kept = lines[:1] + [x for x in lines[1:] if before(x)]
        with atomic_write(out_dir / "metrics.csv") as tmp:
            tmp.write_text("".join(kept) if len(kept) > 1 else "")
        if len(kept) == 1:
            (out_dir / "metrics.csv").unlink()
    if earlier.resolve() != out_dir.resolve() and (earlier / "tb").is_dir():
        (out_dir / "tb").mkdir(exist_ok=True)
        for f in sorted((earlier / "tb").glob("events.*")):
            shutil.copy2(f, out_dir / "tb" / f.name)
    write_json_atomic(
        out_dir / "resumed_from.json", {"run": str(earlier), "checkpoint": str(resume), "start_epoch": start_epoch}
    )
    return (
        f"resumed from {earlier} at epoch {start_epoch}: metrics.csv and tb/ in {out_dir} continue that run's "
        f"history (epochs 1-{start_epoch - 1} copied; the earlier folder is unchanged)"
    )


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@guard_task
def main(cfg: DictConfig) -> float:
    resolved, commit = OmegaConf.to_container(cfg, resolve=True), ckpt.git_commit()
    command = " ".join(["python train.py", *map(shlex.quote, HydraConfig.get().overrides.task)])
    check_settings(resolved, TRAIN)
    rank, local_rank, world = init_distributed()
    seed_everything(cfg.seed + rank)
    device = pick_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(int(cfg.trainer.threads))
    heads, covs = head_classes(resolved["model"]["heads"]), list(resolved["model"]["covariates"])
    kinds = {h: spec.kind for h, spec in parse_heads(resolved["model"]["heads"]).items()}
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
    counts = {"train": ckpt.label_counts(train_recs, heads), "val": ckpt.label_counts(val_recs, heads)}

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
    loss_fn = instantiate(cfg.loss, heads=resolved["model"]["heads"], segmentation=not frozen)
    optimizer = instantiate(cfg.optim.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    steps = min(len(train_loader), cfg.trainer.max_steps_per_epoch or len(train_loader))
    scheduler = instantiate(cfg.optim.scheduler)(
        optimizer, total_steps=steps * cfg.trainer.max_epochs, warmup_steps=steps * cfg.optim.warmup_epochs
    )
    ema = ModelEMA(model, cfg.trainer.ema.decay) if cfg.trainer.ema.enabled else None
    start_epoch, best = 1, float("-inf")  # any first score wins: -(head NLL) is below -1 for 3+ classes
    ckpt_dir = (out_dir := Path(HydraConfig.get().runtime.output_dir)) / "checkpoints"
    if cfg.trainer.resume:
        start_epoch, best = ckpt.restore_training(cfg.trainer.resume, model, optimizer, scheduler, ema)
        if rank == 0:  # the best epoch so far travels with the run
            ckpt.copy_checkpoint(Path(cfg.trainer.resume).with_name("best"), ckpt_dir / "best")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        clean_stale_partials(out_dir)  # temporary files of a killed earlier run in this folder
        write_json_atomic(out_dir / "splits.json", {"group": data.get("group", "column"), "cv": cv, "parts": parts})
        if cfg.trainer.resume:  # one folder holds the whole run's logs (continue_logs)
            print(continue_logs(cfg.trainer.resume, out_dir, start_epoch=start_epoch), flush=True)
        writer = SummaryWriter(str(out_dir / "tb"), purge_step=start_epoch if cfg.trainer.resume else None)
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
            card = ckpt.training_card(
                resolved,
                epoch=epoch,
                metrics=stats,
                n_train=len(train_recs),
                n_val=len(val_recs),
                counts=counts,
                device=str(device),
                commit=commit,
                init_from=init,
                command=command,
            )
            best = ckpt.save_epoch(
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
        from models.calibration import finish_heads

        finish_heads(
            ckpt_dir / "best",
            val_recs,
            heldout,
            oof=out_dir / "oof.json",
            fold=cv["fold"],
            folds=cv["folds"],
            variant=cfg.model.head_inputs,
            splits=parts,
            cv=cv,
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
    run_cli(main)
