"""The review settings (``review.*`` in configs/infer.yaml), shared by the pipeline and its summary."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError


@dataclass
class ReviewOptions:
    batch_size: int = 8
    threshold: float = 0.5
    smoothing: float = 0.6  # EMA weight of the newest frame in videos; 1.0 = off
    min_area_fraction: float = 0.002  # drop predicted specks smaller than this fraction of the field of view
    scope_mask: bool = True  # ignore predictions outside the endoscope's field of view
    scope_every: int = 30  # re-detect the field of view every N video frames
    # fill burned-in text (found by data/deid.py's detector, inside the field of view too) and everything outside the
    # field of view, in every picture the run writes and sees; the model reads the de-identified frames
    deidentify: bool = False
    deid_check: str = "fail"  # text still found after redaction: "fail" (an error, exit code 2) or "warn"
    deid_every_s: float = 2.0  # videos: seconds between detector runs (also at scene changes; boxes persist between)
    anonymise_names: bool = False  # outputs named by a keyed hash of the input's content; no input path written
    overlay: bool = True
    write_probs: bool = True
    report: bool = True
    frames_fps: float = 25.0  # frame rate given to a folder of frames treated as a video
    crf: int = 23
    key_frames: int = 6
    overlay_size: tuple[int, int] | list[int] | None = None  # [width, height] of the overlay video; None = input
    min_informative_frames: int = 3  # a video's head estimate abstains with fewer informative frames ...
    abstain_below: float = 0.6  # ... or when its aggregated confidence is below this
    covariates: dict[str, float] | None = None  # the case's clinical covariates (heads that read them); None = unknown
    streaming: bool = True  # videos: decode / model / render+encode overlap in threads (review/stream.py)
    png_level: int = 1  # PNG compression of masks/probs (0 fastest .. 9 smallest; OpenCV default 3)
    x264_preset: str = "ultrafast"  # libx264 speed/size trade-off of the overlay video
    video_probs_at: str = "model"  # videos' probs/: at the model's S x S grid ("model") or the frame's size
    queue_depth: int = 16  # frames waiting per stage (bounds memory)
    original_video: bool = False  # videos: also <stem>_original.mp4, the frames as shown under the overlay
    # heads the display gate (models/gate.py) refuses: False = written nowhere; True = their estimates go to
    # predictions.jsonl / summary.json under "research_only" (never the overlay or the report), for research
    research_heads: bool = False

    def __post_init__(self) -> None:
        # a string such as "false" would be truthy and write refused heads' estimates: only a real bool may turn it on
        if not isinstance(self.research_heads, bool):
            raise UserError(f"review.research_heads={self.research_heads!r} is invalid: it must be true or false")
