"""Training presets: each module defines `CONFIG: TrainConfig` (name: module name, `_` -> `-`)."""
