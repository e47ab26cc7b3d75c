"""Token classification (tagging): CoNLL data and entity metrics."""
