"""Export for serving: SavedModel (TF Serving) and TFLite."""
