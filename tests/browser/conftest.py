"""Fixtures of the browser test: chromedriver and headless Chromium, and the acceptance harness."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "acceptance"))
