"""mount_drive(): a local folder outside Colab, $EVA_HOME overrides it, and importing the package does nothing."""
from __future__ import annotations

import subprocess
import sys


def test_mount_drive_local_fallback_and_env_override(tmp_path, monkeypatch):
    from eva_helpers.paths import mount_drive

    monkeypatch.delenv("EVA_HOME", raising=False)
    monkeypatch.setenv("EVA_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    p = mount_drive()
    assert p.root == tmp_path / "eva_home" and not p.on_drive
    assert p.data.is_dir() and p.runs.is_dir() and p.cache == tmp_path / "cache"
    monkeypatch.setenv("EVA_HOME", str(tmp_path / "elsewhere"))
    assert mount_drive().root == tmp_path / "elsewhere"


def test_import_has_no_side_effects(tmp_path):
    code = ("import sys, eva_helpers, eva_helpers.paths, eva_helpers.data.formats, eva_helpers.cli; "
            "heavy = [m for m in ('torch', 'cv2', 'transformers', 'google.colab') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []  # nothing created, mounted or downloaded
