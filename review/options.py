"""The review settings (``review.*`` in configs/infer.yaml) as ReviewOptions, shared by the pipeline and its
summary, each with its rule; and infer.py's settings (InferSettings) with INFER, their table checked at the door.

ReviewOptions checks itself on construction, so that a notebook user who builds one by hand gets the one-line
message infer.py gives ('review.smoothing=0 is invalid: it must be a number > 0 and <= 1'). infer.py's schema is
closed: every key of configs/infer.yaml is here, and a key that is not (a typo, +foo=1) is refused before any work
(core.cli.check_command_line on the command line, check_settings(closed=True) after). Imports nothing heavy:
infer.py checks its settings before torch loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import UserError
from core.settings import (
    HYDRA_KEYS,
    Bool,
    Choice,
    Num,
    NumberMap,
    Size,
    Text,
    check_object,
    check_settings,
    rules_of,
    section,
    setting,
)
from models.predictor_settings import PredictorSettings, partnered_ensemble

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass
class ReviewOptions:
    """The ``review.*`` settings with their defaults (configs/infer.yaml repeats them for the command line)."""

    batch_size: int = setting(Num(1, 256, integer=True), 8)
    threshold: float = setting(Num(0, 1, lo_open=True), 0.5)
    smoothing: float = setting(Num(0, 1, lo_open=True), 0.6)  # EMA weight of the newest frame in videos; 1.0 = off
    # drop predicted specks smaller than this fraction of the field of view
    min_area_fraction: float = setting(Num(0, 1, hi_open=True), 0.002)
    scope_mask: bool = setting(Bool(), True)  # ignore predictions outside the endoscope's field of view
    scope_every: int = setting(Num(1, integer=True), 30)  # re-detect the field of view every N video frames
    # fill burned-in text (found by data/deid.py's detector, inside the field of view too) and everything outside the
    # field of view, in every picture the run writes and sees; the model reads the de-identified frames
    deidentify: bool = setting(Bool(), False)
    # text still found after redaction: "fail" (an error, exit code 2) or "warn"
    deid_check: str = setting(Choice(("fail", "warn")), "fail")
    # videos: seconds between detector runs (also at scene changes; boxes persist between)
    deid_every_s: float = setting(Num(0.04, 3600), 2.0)
    # outputs named by a keyed hash of the input's content; no input path written
    anonymise_names: bool = setting(Bool(), False)
    overlay: bool = setting(Bool(), True)
    write_probs: bool = setting(Bool(), True)
    report: bool = setting(Bool(), True)
    frames_fps: float = setting(Num(0.1, 1000), 25.0)  # frame rate given to a folder of frames treated as a video
    crf: int = setting(Num(0, 51, integer=True), 23)
    key_frames: int = setting(Num(0, 100, integer=True), 6)
    # [width, height] of the overlay video; None = the input's
    overlay_size: tuple[int, int] | list[int] | None = setting(Size(), None)
    # a video's head estimate abstains with fewer informative frames (data.quality.is_informative) ...
    min_informative_frames: int = setting(Num(1, integer=True), 3)
    abstain_below: float = setting(Num(0, 1), 0.6)  # ... or when its aggregated confidence is below this
    # the case's clinical covariates (heads that read them); None = unknown
    covariates: dict[str, float] | None = setting(NumberMap(), None)
    # videos: decode / model / render+encode overlap in threads (review/stream.py)
    streaming: bool = setting(Bool(), True)
    png_level: int = setting(Num(0, 9, integer=True), 1)  # PNG compression of masks/probs (0 fastest .. 9 smallest)
    x264_preset: str = setting(Choice(X264_PRESETS), "ultrafast")  # libx264's speed/size trade-off of the overlay
    # videos' probs/: at the model's S x S grid ("model") or the frame's size ("input")
    video_probs_at: str = setting(Choice(("model", "input")), "model")
    queue_depth: int = setting(Num(1, 256, integer=True), 16)  # frames waiting per stage (bounds memory)
    # videos: also <stem>_original.mp4, the frames as shown under the overlay
    original_video: bool = setting(Bool(), False)
    # heads the display gate (models/gate.py) refuses: False = written nowhere; True = their estimates go to
    # predictions.jsonl / summary.json under "research_only" (never the overlay or the report), for research. Only a
    # real bool turns it on: a string such as "false" would be truthy
    research_heads: bool = setting(Bool(), False)

    def __post_init__(self) -> None:
        check_object(self, "review")


@dataclass(kw_only=True)
class InferSettings(PredictorSettings):
    """infer.py's settings (configs/infer.yaml holds the defaults): the checkpoint's (PredictorSettings), the
    inputs and outputs, an archive's (out_root, inputs, case, resume, inputs_row), and ``review``."""

    input: str | list[str] = setting(Text(listable=True))  # image, folder of images, video, or a list of them
    out_dir: str = setting(Text())
    frames_as_video: bool = setting(Bool())
    out_root: str | None = setting(Text(nullable=True))
    inputs: str | None = setting(Text(nullable=True))
    case: str | None = setting(Text(nullable=True))
    resume: bool = setting(Bool())
    inputs_row: int | None = setting(Num(0, integer=True, nullable=True))
    review: ReviewOptions = section(ReviewOptions)


INFER = rules_of(InferSettings)
INFER_WHERE = "configs/infer.yaml"  # named in the message for an unknown setting


def read_infer_settings(resolved: Mapping[str, Any]) -> InferSettings:
    """infer.py's door: its resolved configuration (plain dicts and lists) checked against INFER (an unknown key, a
    wrong type or a value out of range: one UserError naming it) and built into InferSettings, which is all the
    review code below infer.py takes."""
    check_settings(resolved, INFER, closed=True, where=INFER_WHERE)
    fields = {k: v for k, v in resolved.items() if k not in HYDRA_KEYS}  # Hydra keys: allowed, not settings
    fields = partnered_ensemble(fields)  # another checkpoint runs without the profile's ensemble members
    review = fields.pop("review", None)
    if not isinstance(review, Mapping):
        raise UserError(f"review={review!r} is invalid: give review.KEY=VALUE settings ({INFER_WHERE} lists them)")
    try:
        review = ReviewOptions(**{k: v for k, v in review.items() if k not in HYDRA_KEYS})
        return InferSettings(**fields, review=review)
    except TypeError as e:  # a required setting missing (a hand-made config without one)
        raise UserError(f"{INFER_WHERE}: {e}") from None


def settings_dict(settings: InferSettings) -> dict[str, Any]:
    """The settings as plain dicts and lists (config.yaml, the archive's settings digest, the predictor's keywords)."""
    return asdict(settings)
