"""eva_helpers: dataset build, data access, models, training and evaluation for eva-maskdepth.

Nothing mounts, downloads or opens files at import time; heavy modules (torch, cv2) load on first use.
"""
__version__ = "0.1.0"
