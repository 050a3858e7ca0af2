"""Drop the `detectron2._C` extension from setuptools builds.

Installed only into pb1-detectron2's build environment (see the root pyproject's
`extra-build-dependencies`). The sdist has no C++ sources, and seemadapt uses only pure-Python
detectron2 (catalogs, loaders, transforms, structures, evaluators), so the extension is skipped.
"""

try:
    from setuptools.command import build_ext as _build_ext

    _original_run = _build_ext.build_ext.run

    def _run(self):  # type: ignore[no-untyped-def]
        self.extensions = [e for e in (self.extensions or []) if e.name != "detectron2._C"]
        if self.extensions:
            _original_run(self)

    _build_ext.build_ext.run = _run
except Exception:  # pragma: no cover - only matters inside a build environment
    pass
