"""Moved: the demo-data generator is :mod:`scripts.data.synthetic` (``python -m scripts.data.synthetic``)."""

raise ImportError(
    "scripts.demo_data moved to scripts.data.synthetic: run `python -m scripts.data.synthetic OUT_DIR ...` "
    "and use `$scripts.data.synthetic.ensure_demo_dataset(...)` in configs."
)
