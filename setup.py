"""Ships models/*.toml (the model specs, kept at the top level as their source) inside the package, as
perceiver_export/models/, so an installed wheel finds `--config perceiver-base` without a checkout; and docs/*.md
as perceiver_export/docs/, the pages `python -m perceiver_export docs TOPIC` prints (help texts point there)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SPECS = Path(__file__).resolve().parent / "models"
DOCS = Path(__file__).resolve().parent / "docs"


class BuildWithModelSpecs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "perceiver_export" / "models"
        target.mkdir(parents=True, exist_ok=True)
        for spec in sorted(SPECS.glob("*.toml")):
            self.copy_file(str(spec), str(target / spec.name))
        pages = Path(self.build_lib) / "perceiver_export" / "docs"
        pages.mkdir(parents=True, exist_ok=True)
        for page in sorted(DOCS.glob("*.md")):
            self.copy_file(str(page), str(pages / page.name))


setup(cmdclass={"build_py": BuildWithModelSpecs})
