"""The `cai-kit` command line: one module per command group, each thin over the library.

The top layer: it may import every other part, and nothing imports it (`cai_kit.__main__`
aside). The only package that imports typer; flags shared by job commands are in `common.py`.
"""
