"""Jobs that run inside the fetcher and preprocessor images (and the indexed-dataset format the trainer reads)."""
