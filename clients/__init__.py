"""naiad's own small client helpers. Not built yet: use the official `tritonclient`, which naiad
supports fully."""
