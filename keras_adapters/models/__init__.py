"""The Keras models that hold a backbone, named adapters and their heads."""
