"""Stage 2, the dataset folder: its format and codecs, verified opening, reading, statistics, loaders."""
