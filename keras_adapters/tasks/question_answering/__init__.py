"""Extractive question answering: SQuAD data and answer metrics."""
