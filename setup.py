"""Build hook: the wheel carries the mapping sets of ``mappings/`` as package data ``bridge/_mappings/``.

The mapping specs are data reviewed like code and live at the top of the project, beside ``bridge/``.
An installed bridge has no project folder around it, so the wheel takes a copy and
``bridge.translate.mappings_root`` falls back to it. Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MAPPINGS = Path(__file__).resolve().parent / "mappings"


class BuildWithMappings(build_py):
    """``build_py`` that also copies ``mappings/`` into the built package."""

    def run(self) -> None:
        super().run()
        # An editable install reads the project's own mappings/; only a real build needs the copy.
        if MAPPINGS.is_dir() and not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "bridge" / "_mappings"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(MAPPINGS, target)


setup(cmdclass={"build_py": BuildWithMappings})
