"""Prediction on a user's photos and footage: `eva predict`. Reads a trained run (`training/trained_run.py`), never
trains or scores: `pair.py` one (bg, fg_bg) pair at the photo's size, `folders.py` a shoot's folders (`pairing.py`
which bg goes with which fg_bg), `align.py` and `registration.py` the second shot's alignment (`align_guard.py` its
bounds), `refine.py` the mask's outline at full resolution, `masks.py` the run's threshold and clean-up, `footage.py` a
fixed camera's clip (`clip.py` frames in and videos out, `plate.py` the background plate, `frame_align.py` alignment
at video rates)."""
