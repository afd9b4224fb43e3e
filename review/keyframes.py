"""Key frames for the report: the most lesion-like frame of each stretch of the video, in bounded memory.

The video's length need not be known (mkv and webm often declare no frame count): frames are binned by time, and
whenever more than ``2 * k`` bins hold a frame the bin width doubles and neighbouring bins merge, keeping the better
frame. So at most ``2 * k`` frames are ever held, for a 10-second clip or a 3-hour procedure alike, and the result
is spread over the whole video.
"""

from __future__ import annotations

from typing import Any


class KeyFrames:
    def __init__(self, k: int, *, bin_s: float = 1.0) -> None:
        self.k, self.bin_s = k, bin_s
        self.bins: dict[int, tuple[float, int, Any]] = {}  # bin -> (score, frame index, image)

    def wants(self, time_s: float, score: float) -> bool:
        """Would a frame at ``time_s`` with ``score`` be kept? (Render the image only when it would.)"""
        if self.k <= 0:
            return False
        held = self.bins.get(int(time_s // self.bin_s))
        return held is None or score > held[0]

    def offer(self, time_s: float, score: float, index: int, image: Any) -> None:
        if not self.wants(time_s, score):
            return
        self.bins[int(time_s // self.bin_s)] = (score, index, image)
        while len(self.bins) > 2 * self.k:
            self._coarsen()

    def _coarsen(self) -> None:
        self.bin_s *= 2
        merged: dict[int, tuple[float, int, Any]] = {}
        for b, item in self.bins.items():
            nb = b // 2
            if nb not in merged or item[0] > merged[nb][0]:
                merged[nb] = item
        self.bins = merged

    def result(self) -> list[tuple[float, int, Any]]:
        """At most k frames, in video order: while there are too many, of the two neighbours closest in time the
        weaker one goes (spread over the video first, then the most lesion-like)."""
        items = sorted(self.bins.values(), key=lambda t: t[1])
        while len(items) > max(0, self.k):
            j = min(
                range(len(items) - 1), key=lambda i: (items[i + 1][1] - items[i][1], min(items[i][0], items[i + 1][0]))
            )
            items.pop(j if items[j][0] < items[j + 1][0] else j + 1)
        return items
