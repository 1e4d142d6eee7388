"""The tuning side: search spaces → trials, evaluation in isolated workers, studies and their storage, presets,
progress and reports. One direction: trial → config → constraints → worker → typed result → trial state."""
