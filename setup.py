"""Packaging glue that pyproject.toml cannot express: the shipped constitutions live in the
repository's top-level `constitutions/` folder (where users find and edit them) and are
installed inside the package as `cai_kit/constitutions/`, so `--constitution harmless` works
after `pip install`. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["cai_kit", "cai_kit.*"]), "cai_kit.constitutions"],
    package_dir={"cai_kit.constitutions": "constitutions"},
    package_data={
        "cai_kit": ["py.typed", "serve/page.html", "review/page.html"],
        "cai_kit.constitutions": ["*.yaml"],
    },
)
