"""A planted study from real Kvasir-SEG frames: proves the hospital path (cross-validate -> report -> gate) end to end.

    python benchmarks/planted_study.py --out outputs/planted_study          (about 15 min on 2 CPU cores)

NOT clinical data and NOT a fibrosis or lift result: the labels are planted. Kvasir-SEG images (research and
education use only) are dealt into pretend patients of ``--frames`` frames each, frames of similar lesion size
together (as frames of one real lesion would be). Per patient:
- fibrosis (F0/F1/F2) = the tertile of the patient's mean lesion area (ground-truth masks): a grade the frames
  really show, so a head on the frozen segmenter can learn it;
- lift (adequate/partial/non-lifting) = drawn at random, independent of everything: a head must stay at chance;
- prior_radiotherapy (yes/no) drawn with P = 0.2 / 0.5 / 0.8 for F0 / F1 / F2: a covariate that predicts the grade
  about as well as a real clinical variable might; weeks_since_rt and distance_av_cm are noise.

Then: a 5-fold patient-level cross-validation of heads on the shipped frozen segmenter (train.py
experiment=hospital_heads, labels declared real by "planted study" so that the gate's evidence rule is what
decides), the pooled report (python -m metrics.cv, with the covariates-only logistic regression), a logistic
regression on radiotherapy alone on the same folds (the reference for the covariates-only model), a final model on
every patient, and python -m models.approve for both heads on the CV evidence. Writes ``summary.json`` with every
number the README quotes and exits 0; tests/test_planted_study.py (slow) asserts on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metrics.grading import auroc  # noqa: E402

FIB, LIFT = ["F0", "F1", "F2"], ["adequate", "partial", "non-lifting"]
COVS = ["prior_radiotherapy", "weeks_since_rt", "distance_av_cm"]


def build_study(kvasir: Path, out: Path, *, patients: int, frames: int, seed: int) -> dict:
    """Write out/manifest.csv (image, mask, group) and out/cases.csv (group, fibrosis, lift, covariates)."""
    import cv2

    rng = np.random.default_rng(seed)
    names = sorted(p.stem for p in (kvasir / "images").glob("*.jpg"))
    pick = [names[i] for i in rng.permutation(len(names))[: patients * frames]]
    area_of = {}
    for n in pick:
        m = cv2.imread(str(kvasir / "masks" / f"{n}.jpg"), cv2.IMREAD_GRAYSCALE)
        area_of[n] = float((m > 127).mean())
    # a patient's frames show one lesion, so they share its size: deal the frames sorted by lesion area into
    # consecutive patients (then shuffle which patient is which)
    by_area = sorted(pick, key=area_of.get)
    order = rng.permutation(patients)
    rows, cases, areas = [], [], []
    for p in range(patients):
        mine = by_area[order[p] * frames : (order[p] + 1) * frames]
        rows += [{"image": str(kvasir / "images" / f"{n}.jpg"), "group": f"P{p:03d}"} for n in mine]
        areas.append(float(np.mean([area_of[n] for n in mine])))
    cut = np.quantile(areas, [1 / 3, 2 / 3])
    for p, area in enumerate(areas):
        grade = int(np.searchsorted(cut, area, side="right"))
        rt = int(rng.random() < (0.2, 0.5, 0.8)[grade])
        cases.append(
            {
                "group": f"P{p:03d}",
                "fibrosis": FIB[grade],
                "lift": LIFT[int(rng.integers(3))],
                "prior_radiotherapy": "yes" if rt else "no",
                "weeks_since_rt": round(float(rng.uniform(6, 20)), 1) if rt else "",
                "distance_av_cm": round(float(rng.uniform(1, 12)), 1),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("manifest.csv", rows), ("cases.csv", cases)):
        with (out / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    return {
        "patients": patients,
        "frames": len(rows),
        "grades": {g: sum(c["fibrosis"] == g for c in cases) for g in FIB},
    }


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode not in (0, 2):
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)} (see {log})")
    return time.perf_counter() - t0


def rt_only_auroc(study: Path, cv_dir: Path) -> float | None:
    """Case AUROC (macro one-vs-rest) of a logistic regression on prior radiotherapy alone, out-of-fold on the
    same folds as the cross-validation (each case's fold read from the pooled rows)."""
    from sklearn.linear_model import LogisticRegression

    fold_of = {}
    for f in cv_dir.rglob("oof.json"):
        d = json.loads(f.read_text())
        fold_of.update({r["group"]: d["fold"] for r in d["rows"]})
    cases = list(csv.DictReader((study / "cases.csv").open()))
    g = [c["group"] for c in cases if f"manifest/{c['group']}" in fold_of]
    x = np.array([[1.0 if c["prior_radiotherapy"] == "yes" else 0.0] for c in cases if c["group"] in g])
    y = np.array([FIB.index(c["fibrosis"]) for c in cases if c["group"] in g])
    folds = np.array([fold_of[f"manifest/{k}"] for k in g])
    probs = np.zeros((len(y), 3))
    for f in np.unique(folds):
        m = LogisticRegression(max_iter=1000).fit(x[folds != f], y[folds != f])
        probs[folds == f] = m.predict_proba(x[folds == f])
    return auroc(probs, y)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/planted_study")
    ap.add_argument("--kvasir", default=str(ROOT.parent / "shared" / "data" / "kvasir-seg"))
    ap.add_argument("--patients", type=int, default=100)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args(argv)
    out, kvasir = Path(a.out).resolve(), Path(a.kvasir)
    if not (kvasir / "images").is_dir():
        print(f"error: Kvasir-SEG not found at {kvasir} (--kvasir)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    summary: dict = {"study": build_study(kvasir, out / "study", patients=a.patients, frames=a.frames, seed=a.seed)}
    log, py = out / "log.txt", sys.executable
    common = [
        "experiment=hospital_heads",
        f"data.manifest={out / 'study' / 'manifest.csv'}",
        "data.cases=cases.csv",
        f"model.covariates=[{','.join(COVS)}]",
        "data.label_source.fibrosis=real",
        "data.label_source.lift=real",
        "data.label_declared_by='planted study, not clinical labels'",
        f"trainer.max_epochs={a.epochs}",
        "trainer.progress=false",
        f"trainer.n_boot={a.n_boot}",
    ]
    cv = out / "cv"
    folds = ",".join(str(i) for i in range(a.folds))
    summary["time_cv_s"] = run(
        [py, "train.py", "-m", *common, f"hydra.sweep.dir={cv}", f"data.cv.folds={a.folds}", f"data.cv.fold={folds}",
         "data.cv.stratify=fibrosis"], log)  # fmt: skip
    summary["time_report_s"] = run([py, "-m", "metrics.cv", str(cv), "--n-boot", str(a.n_boot)], log)
    res = json.loads((cv / "cv_results.json").read_text())
    for variant in ("image", "covariates-lr"):
        for h in ("fibrosis", "lift"):
            c = res[variant]["heads"][h].get("case") or res[variant]["heads"][h]["frame"]
            summary[f"{variant}/{h}"] = {
                k: c.get(k) for k in ("n_scored", "n_cases", "abstained", "auroc", "qwk", "ece", "ci95", "calibration")
            }
    summary["rt_only_lr_case_auroc"] = rt_only_auroc(out / "study", cv)
    final = out / "final"
    summary["time_final_s"] = run([py, "train.py", *common, f"hydra.run.dir={final}"], log)
    stem = final / "checkpoints" / "best"
    for h in ("fibrosis", "lift"):
        code = subprocess.run(
            [py, "-m", "models.approve", str(stem), "--head", h, "--by", "planted study", "--yes",
             "--evidence", str(cv / "cv_results.json"), "--variant", "image"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        summary[f"approve/{h}"] = {"exit": code.returncode, "refused": code.stderr.strip().splitlines()}
    from models.checkpoint import read_card
    from models.gate import refusals

    card = read_card(stem)
    summary["gate"] = {h: refusals(card, h) for h in ("fibrosis", "lift")}
    summary["time_total_s"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps(summary, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
