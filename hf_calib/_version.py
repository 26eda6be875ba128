"""The package version: one tiny module, so code inside ``hf_calib`` never imports the package root for it.

Keep it equal to ``version`` in ``pyproject.toml``.
"""

__version__ = "0.1.0"
