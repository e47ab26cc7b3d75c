"""Building blocks under every task: injecting adapters into a backbone, composing, fusing, merging, precision."""
