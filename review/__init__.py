"""What a clinician sees: per-frame descriptions, temporal smoothing, overlays, the case report."""
